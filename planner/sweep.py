"""Sweeps: the best plan per design point (hardware, context, GPU count, batch), with and
without Helix, and the Pareto frontier of throughput per GPU against interactivity (tokens/s
per user).

Thousands of points stay cheap because the traced graph is loaded once and shared, each
search solves the compact one-block-per-group program with lower-bound pruning (only the best
plan of a point is needed), the search without Helix hands its prices and its best time to
the search with Helix, and points are solved in worker processes (results in input order).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

from cost_models import HardwareSpec
from ir.errors import InfeasiblePlanError
from ir.graph import Graph
from ir.workload import Workload
from passes.parallelize.search import PriceCache, SearchResult, search
from passes.parallelize.strategies import DEFAULT_STRATEGIES
from planner.frontend import LoadedModel


@dataclass(frozen=True)
class SweepPoint:
    batch: int
    gpus: int
    helix: bool
    plan: str
    ttl_seconds: float
    context: int = 0
    hardware: str = ""

    @property
    def tokens_per_s_per_user(self) -> float:
        return 1.0 / self.ttl_seconds

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.batch / self.ttl_seconds / self.gpus

    def to_dict(self) -> dict:
        return {
            "batch": self.batch,
            "gpus": self.gpus,
            "context": self.context,
            "hardware": self.hardware,
            "plan": self.plan,
            "ttl_seconds": self.ttl_seconds,
            "tokens_per_s_per_user": self.tokens_per_s_per_user,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "helix": self.helix,
        }


@dataclass(frozen=True)
class DesignPoint:
    """One point of the grid; it is planned twice, without and with Helix."""

    hardware: HardwareSpec
    context: int
    gpus: int
    batch: int


def design_points(
    hardware: Sequence[HardwareSpec], contexts: Sequence[int], gpu_counts: Sequence[int],
    batches: Sequence[int],
) -> list[DesignPoint]:
    """The grid in a fixed order: hardware, then context, GPU count and batch."""
    return [
        DesignPoint(hw, context, gpus, batch)
        for hw in hardware for context in contexts for gpus in gpu_counts for batch in batches
    ]


def summarize_result(result: SearchResult) -> str:
    """The mesh and the strategies per block kind of a search's best plan, on one line."""
    best = result.best
    meaning = best.built.meaning
    kinds: dict[str, set[str]] = {}
    for block in best.built.problem.blocks:
        option = best.solution.assignment[block.name]
        kind = block.group.split(".")[0]
        kinds.setdefault(kind, set()).add(meaning[option][0] if option in meaning else option)
    parts = [f"{k}:{'/'.join(sorted(v))}" for k, v in sorted(kinds.items()) if k in ("attention", "mlp", "moe")]
    return f"{best.mesh} " + " ".join(parts)


def plan_point(
    graph: Graph, workload: Workload, strategies: frozenset[str], point: DesignPoint
) -> tuple[list[SweepPoint], list[dict]]:
    """The best plan of one design point without Helix and with it (or why there is none)."""
    wl = replace(workload, batch=point.batch, context=point.context)
    hw = point.hardware
    cache = PriceCache(graph, wl, hw)
    without = frozenset(strategies) - {"helix"}
    points: list[SweepPoint] = []
    skipped: list[dict] = []
    incumbent_s = math.inf
    for helix in (False, True):
        allowed = without | {"helix"} if helix else without
        try:
            result = search(
                graph, wl, hw, point.gpus, strategies=allowed, top_k=1, prune=True, compact=True,
                price_cache=cache, incumbent_s=incumbent_s,
            )
        except InfeasiblePlanError as exc:
            skipped.append({"batch": point.batch, "gpus": point.gpus, "context": point.context,
                            "hardware": hw.name, "helix": helix, "why": str(exc)[:300]})
            continue
        seconds = result.best.solution.objective_s
        # Every plan without Helix is a plan with Helix allowed: a bound for the second search.
        incumbent_s = seconds
        points.append(SweepPoint(point.batch, point.gpus, helix, summarize_result(result), seconds,
                                 point.context, hw.name))
    return points, skipped


_WORKER: dict = {}


def _init_worker(graph: Graph, workload: Workload, strategies: frozenset[str]) -> None:
    _WORKER.update(graph=graph, workload=workload, strategies=strategies)


def _plan_chunk(chunk: list[DesignPoint]) -> list[tuple[list[SweepPoint], list[dict]]]:
    return [plan_point(_WORKER["graph"], _WORKER["workload"], _WORKER["strategies"], p) for p in chunk]


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def sweep(
    loaded: LoadedModel,
    points: Sequence[DesignPoint],
    *,
    workload: Workload,
    strategies: frozenset[str] = DEFAULT_STRATEGIES,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[SweepPoint], list[dict]]:
    """Plan every design point (see `plan_point`) in `workers` processes; results come back
    in the order of `points` whatever the worker count. `progress(n)` is told each time n
    more design points are done."""
    results: list[tuple[list[SweepPoint], list[dict]]] = []
    workers = max(1, min(workers, len(points)))
    if workers == 1:
        for p in points:
            results.append(plan_point(loaded.graph, workload, strategies, p))
            if progress is not None:
                progress(1)
    else:
        # Small chunks keep the workers evenly loaded and the progress bar moving.
        size = max(1, min(16, len(points) // (workers * 8)))
        chunks = [list(points[i:i + size]) for i in range(0, len(points), size)]
        by_chunk: dict[int, list] = {}
        with ProcessPoolExecutor(
            max_workers=workers, initializer=_init_worker,
            initargs=(loaded.graph, workload, frozenset(strategies)),
        ) as pool:
            futures = {pool.submit(_plan_chunk, c): i for i, c in enumerate(chunks)}
            for future in as_completed(futures):
                i = futures[future]
                by_chunk[i] = future.result()
                if progress is not None:
                    progress(len(chunks[i]))
        for i in range(len(chunks)):
            results.extend(by_chunk[i])
    out_points = [p for pts, _ in results for p in pts]
    out_skipped = [s for _, skips in results for s in skips]
    return out_points, out_skipped


def sweep_points(
    loaded: LoadedModel,
    *,
    hardware: HardwareSpec,
    workload: Workload,
    gpu_counts: list[int],
    batches: list[int],
    strategies: frozenset[str] = DEFAULT_STRATEGIES,
    progress=None,
) -> tuple[list[SweepPoint], list[dict]]:
    """Best plan for every (gpus, batch) at the workload's context on one hardware, once
    without Helix and once with it (in-process)."""
    grid = design_points([hardware], [workload.context], gpu_counts, batches)
    step = None if progress is None else (lambda n: [progress() for _ in range(2 * n)])
    return sweep(loaded, grid, workload=workload, strategies=strategies, progress=step)


def pareto_front(points: list[SweepPoint]) -> list[SweepPoint]:
    """Points no other point beats on both tokens/s per user and tokens/s per GPU."""
    ordered = sorted(points, key=lambda p: (-p.tokens_per_s_per_user, -p.tokens_per_s_per_gpu))
    front: list[SweepPoint] = []
    best_gpu = -1.0
    for p in ordered:
        if p.tokens_per_s_per_gpu > best_gpu:
            front.append(p)
            best_gpu = p.tokens_per_s_per_gpu
    return front


def _slices(points: list[SweepPoint]) -> list[tuple[str, int]]:
    """(hardware, context) pairs in first-seen order: a frontier compares plans for one."""
    seen: dict[tuple[str, int], None] = {}
    for p in points:
        seen.setdefault((p.hardware, p.context), None)
    return list(seen)


def write_sweep(out: Path, points: list[SweepPoint], skipped: list[dict], title: str) -> dict[str, Path]:
    """pareto.json (every point, the frontier with and without Helix over all points and,
    per hardware and context, `frontiers`) and pareto.png."""
    out.mkdir(parents=True, exist_ok=True)
    frontiers = []
    for hw, context in _slices(points):
        pts = [p for p in points if p.hardware == hw and p.context == context]
        frontiers.append({
            "hardware": hw,
            "context": context,
            "helix": [p.to_dict() for p in pareto_front([p for p in pts if p.helix])],
            "no_helix": [p.to_dict() for p in pareto_front([p for p in pts if not p.helix])],
        })
    data = {
        "points": [p.to_dict() for p in points],
        "frontier": {
            "helix": [p.to_dict() for p in pareto_front([p for p in points if p.helix])],
            "no_helix": [p.to_dict() for p in pareto_front([p for p in points if not p.helix])],
        },
        "frontiers": frontiers,
        "skipped": skipped,
    }
    json_path = out / "pareto.json"
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    png = out / "pareto.png"
    _plot(points, png, title)
    return {"json": json_path, "png": png}


def _plot(points: list[SweepPoint], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    styles = (
        (True, "tab:red", "best with Helix", "-", 2.5),
        (False, "tab:blue", "best without Helix", "--", 1.5),
    )
    slices = _slices(points)
    for helix, color, label, line, width in styles:
        pts = [p for p in points if p.helix == helix]
        if not pts:
            continue
        ax.scatter([p.tokens_per_s_per_user for p in pts], [p.tokens_per_s_per_gpu for p in pts],
                   s=10, color=color, alpha=0.3)
        for i, (hw, context) in enumerate(slices[:12]):
            front = pareto_front([p for p in pts if (p.hardware, p.context) == (hw, context)])
            name = label if len(slices) == 1 else f"{label}, {hw} L={context}"
            ax.plot([p.tokens_per_s_per_user for p in front], [p.tokens_per_s_per_gpu for p in front],
                    marker="o", color=color, label=name if i < 6 else None, linestyle=line,
                    linewidth=width, alpha=1.0 if len(slices) == 1 else 0.6)
    ax.set_xlabel("interactivity: tokens/s per user (1 / TTL)")
    ax.set_ylabel("throughput: tokens/s per GPU")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7 if len(slices) > 1 else None)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
