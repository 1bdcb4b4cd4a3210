"""`serve_plan`: disaggregated against co-located serving of one traffic mix on a GPU budget,
and its outputs (serve.json, pareto.png)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ir.errors import InfeasiblePlanError
from planner.frontend import LoadedModel
from planner.serve.choose import (
    Colocated,
    Disaggregated,
    ParetoPoint,
    Slos,
    best_colocated,
    best_disaggregated,
    pareto_front,
    pareto_points,
)
from planner.serve.pools import (
    PlanSettings,
    PoolOption,
    colocated_options,
    decode_options,
    kv_bytes_per_request,
    powers_of_two,
    prefill_options,
    replica_sizes,
    transfer_link,
)
from planner.serve.traffic import Traffic

PREFILL_BATCHES = (1, 2, 4, 8)
CHUNK_TOKENS = tuple(powers_of_two(64, 16384))
MAX_DECODE_BATCH = 4096


@dataclass
class ServeResult:
    traffic: Traffic
    gpus: int
    slos: Slos
    rate: float | None
    settings: PlanSettings
    kv_bytes_per_request: float
    link: dict
    disaggregated: Disaggregated | None
    colocated: Colocated | None
    points: list[ParetoPoint]
    options: dict[str, list[PoolOption]]

    @property
    def disaggregation_gain(self) -> float | None:
        """Disaggregated over co-located tokens/s per GPU (None when either is infeasible)."""
        if self.disaggregated is None or self.colocated is None:
            return None
        return self.disaggregated.tokens_per_s_per_gpu / self.colocated.tokens_per_s_per_gpu

    def to_dict(self) -> dict:
        return {
            "traffic": self.traffic.to_dict(),
            "gpus": self.gpus,
            "hardware": self.settings.hardware.name,
            "slo": {"ttft_ms": self.slos.ttft_s * 1e3, "ttl_ms": self.slos.ttl_s * 1e3},
            "rate": self.rate,
            "verified_only": self.settings.verified_only,
            "kv_bytes_per_request": self.kv_bytes_per_request,
            "kv_link": self.link,
            "disaggregated": self.disaggregated.to_dict() if self.disaggregated else None,
            "colocated": self.colocated.to_dict() if self.colocated else None,
            "disaggregation_gain": self.disaggregation_gain,
            "pareto": {
                mode: [p.to_dict() for p in pareto_front([q for q in self.points if q.mode == mode])]
                for mode in ("disaggregated", "colocated")
            },
            "candidates": {k: len(v) for k, v in self.options.items()},
        }


def serve_plan(loaded: LoadedModel, settings: PlanSettings, traffic: Traffic, *, gpus: int,
               slos: Slos, rate: float | None = None,
               prefill_batches: tuple[int, ...] = PREFILL_BATCHES,
               max_decode_batch: int = MAX_DECODE_BATCH,
               chunk_tokens: tuple[int, ...] = CHUNK_TOKENS) -> ServeResult:
    """Price every replica size and batch of each pool with the planner, then pick the best
    rate-matched disaggregated split and the best co-located configuration. The grids
    (prefill batches, decode batches doubling up to `max_decode_batch`, chunk sizes) bound
    the search."""
    graph = loaded.graph
    sizes = replica_sizes(gpus)
    pool_sizes = [s for s in sizes if s < gpus]  # the other pool needs a GPU too
    prefills = prefill_options(graph, settings, traffic, pool_sizes, list(prefill_batches))
    decodes = decode_options(graph, settings, traffic, pool_sizes, max_decode_batch)
    colocated = colocated_options(graph, settings, traffic, sizes, list(chunk_tokens))
    if not prefills and not colocated:
        raise InfeasiblePlanError(
            f"the model fits no replica of up to {gpus} GPUs for a {round(traffic.prompt_tokens)}-token "
            "prompt; add GPUs or use smaller dtypes"
        )
    kv_bytes = kv_bytes_per_request(graph, settings, round(traffic.prompt_tokens))
    link = transfer_link(settings.hardware, gpus)
    disagg = best_disaggregated(prefills, decodes, traffic, gpus, slos, link, kv_bytes, rate)
    coloc = best_colocated(colocated, traffic, gpus, slos, rate)
    if disagg is None and coloc is None:
        raise InfeasiblePlanError(_no_config_message(prefills, decodes, colocated, traffic, gpus,
                                                     slos, rate))
    return ServeResult(
        traffic=traffic, gpus=gpus, slos=slos, rate=rate, settings=settings,
        kv_bytes_per_request=kv_bytes,
        link={"bytes_per_s": link.bytes_per_s, "latency_s": link.alpha_s,
              "kind": "scale-up" if gpus <= settings.hardware.scaleup_domain_gpus else "scale-out"},
        disaggregated=disagg, colocated=coloc,
        points=pareto_points(prefills, decodes, colocated, traffic, slos, link, kv_bytes),
        options={"prefill": prefills, "decode": decodes, "colocated": colocated},
    )


def _no_config_message(prefills, decodes, colocated, traffic: Traffic, gpus: int, slos: Slos,
                       rate: float | None) -> str:
    fastest_prefill = min((p.step_s for p in prefills), default=None)
    fastest_decode = min((d.step_s for d in decodes), default=None)
    parts = [f"no disaggregated or co-located configuration on {gpus} GPUs meets TTFT "
             f"{slos.ttft_s * 1e3:.4g} ms and TTL {slos.ttl_s * 1e3:.4g} ms"]
    if rate is not None:
        parts[0] += f" at {rate:g} requests/s"
    if fastest_prefill is not None:
        parts.append(f"the fastest prefill of a {round(traffic.prompt_tokens)}-token prompt takes "
                     f"{fastest_prefill * 1e3:.4g} ms")
    if fastest_decode is not None:
        parts.append(f"the fastest decode step takes {fastest_decode * 1e3:.4g} ms")
    parts.append("relax --ttft-slo/--ttl-slo, lower --rate or add GPUs")
    return "; ".join(parts)


def write_serve(out: Path, result: ServeResult, title: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "serve.json"
    path.write_text(json.dumps(result.to_dict(), indent=1, sort_keys=False) + "\n")
    png = out / "pareto.png"
    _plot(result, png, title)
    return {"serve": path, "png": png}


def _plot(result: ServeResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for mode, color, line in (("disaggregated", "tab:red", "-"), ("colocated", "tab:blue", "--")):
        pts = [p for p in result.points if p.mode == mode]
        if not pts:
            continue
        ax.scatter([p.tokens_per_s_per_user for p in pts], [p.tokens_per_s_per_gpu for p in pts],
                   s=10, color=color, alpha=0.3)
        front = pareto_front(pts)
        ax.plot([p.tokens_per_s_per_user for p in front], [p.tokens_per_s_per_gpu for p in front],
                marker="o", color=color, linestyle=line, label=mode)
    ax.axvline(1.0 / result.slos.ttl_s, color="gray", linestyle=":", label="TTL SLO")
    ax.set_xlabel("interactivity: tokens/s per user (1 / TTL)")
    ax.set_ylabel("throughput: output tokens/s per GPU (rate-matched)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
