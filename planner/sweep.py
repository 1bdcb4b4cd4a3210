"""Sweeps: the best plan per (GPU count, batch), with and without Helix, and the Pareto
frontier of throughput per GPU against interactivity (tokens/s per user)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from cost_models import HardwareSpec
from ir.errors import InfeasiblePlanError
from ir.workload import Workload
from passes.parallelize.search import search
from passes.parallelize.strategies import DEFAULT_STRATEGIES
from planner.frontend import LoadedModel


@dataclass(frozen=True)
class SweepPoint:
    batch: int
    gpus: int
    helix: bool
    plan: str
    ttl_seconds: float

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
            "plan": self.plan,
            "ttl_seconds": self.ttl_seconds,
            "tokens_per_s_per_user": self.tokens_per_s_per_user,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "helix": self.helix,
        }


def summarize_result(result) -> str:
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
    """Best plan for every (gpus, batch), once without Helix and once with it."""
    points: list[SweepPoint] = []
    skipped: list[dict] = []
    without = frozenset(strategies) - {"helix"}
    for gpus in gpu_counts:
        for batch in batches:
            for helix in (False, True):
                allowed = without | {"helix"} if helix else without
                wl = replace(workload, batch=batch)
                try:
                    result = search(loaded.graph, wl, hardware, gpus, strategies=allowed, top_k=1)
                except InfeasiblePlanError as exc:
                    skipped.append({"batch": batch, "gpus": gpus, "helix": helix, "why": str(exc)[:300]})
                else:
                    points.append(SweepPoint(batch, gpus, helix, summarize_result(result),
                                             result.best.solution.objective_s))
                if progress is not None:
                    progress()
    return points, skipped


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


def write_sweep(out: Path, points: list[SweepPoint], skipped: list[dict], title: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "points": [p.to_dict() for p in points],
        "frontier": {
            "helix": [p.to_dict() for p in pareto_front([p for p in points if p.helix])],
            "no_helix": [p.to_dict() for p in pareto_front([p for p in points if not p.helix])],
        },
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
    for helix, color, label, line, width in styles:
        pts = [p for p in points if p.helix == helix]
        if not pts:
            continue
        ax.scatter([p.tokens_per_s_per_user for p in pts], [p.tokens_per_s_per_gpu for p in pts],
                   s=10, color=color, alpha=0.3)
        front = pareto_front(pts)
        ax.plot([p.tokens_per_s_per_user for p in front], [p.tokens_per_s_per_gpu for p in front],
                marker="o", color=color, label=label, linestyle=line, linewidth=width)
    ax.set_xlabel("interactivity: tokens/s per user (1 / TTL)")
    ax.set_ylabel("throughput: tokens/s per GPU")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
