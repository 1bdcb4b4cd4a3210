"""Helix paper reproduction (planning only): DeepSeek-R1 and Llama-3.1-405B shapes, 1M-token
context, GB200 NVL72, FP4 weights and KV cache, 1 to 64 GPUs. Prints helixplan's four ratios
beside the paper's. Run: .venv/bin/python benchmarks/helix_paper.py

Paper (Helix Parallelism, 2025), against the best non-Helix configuration:
  DeepSeek-R1:    up to 1.5x lower TTL at fixed batch; up to 32x larger batch at the same TTL
  Llama-3.1-405B: 1.13x higher peak interactivity; up to 4x more throughput per GPU
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cost_models import load_hardware  # noqa: E402
from ir.workload import Workload  # noqa: E402
from passes.parallelize.strategies import DEFAULT_STRATEGIES  # noqa: E402
from planner.frontend import load_graph  # noqa: E402
from planner.model_source import resolve_source  # noqa: E402
from planner.sweep import SweepPoint, pareto_front, sweep_points  # noqa: E402

GPUS = [1, 2, 4, 8, 16, 32, 64]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
MODELS = {
    "deepseek-r1": ("examples/deepseek.py", {"preset": "deepseek-v3"}),  # R1 has V3's shape
    "llama3.1-405b": ("examples/llama.py", {"preset": "llama3.1-405b"}),
}
# The non-Helix baseline the paper compares against includes TP beyond the KV-head count (KV
# duplicated) and KV parallelism whose FFN stays on the attention's TP group; both are priced
# baselines without a lowering (passes/parallelize/strategies/baselines.py).
BASELINES = frozenset({"tp_kvdup", "tp_attn_group"})


def ttl_ratio_at_fixed_batch(points: list[SweepPoint]) -> float:
    """max over (batch) of best non-Helix TTL / best Helix TTL, each over all GPU counts."""
    best: dict[tuple[int, bool], float] = {}
    for p in points:
        key = (p.batch, p.helix)
        best[key] = min(best.get(key, float("inf")), p.ttl_seconds)
    ratios = [best[(b, False)] / best[(b, True)] for b, h in best if h and (b, False) in best]
    return max(ratios, default=float("nan"))


def batch_ratio_at_same_ttl(points: list[SweepPoint]) -> float:
    """max over non-Helix points of (largest Helix batch with TTL <= its TTL) / its batch."""
    helix = [p for p in points if p.helix]
    ratios = []
    for p in points:
        if p.helix:
            continue
        ok = [q.batch for q in helix if q.ttl_seconds <= p.ttl_seconds]
        if ok:
            ratios.append(max(ok) / p.batch)
    return max(ratios, default=float("nan"))


def peak_interactivity_ratio(points: list[SweepPoint]) -> float:
    h = max(p.tokens_per_s_per_user for p in points if p.helix)
    n = max(p.tokens_per_s_per_user for p in points if not p.helix)
    return h / n


def throughput_ratio_at_same_interactivity(points: list[SweepPoint]) -> float:
    """max over non-Helix frontier points of (best Helix tokens/s/GPU at >= its tokens/s per
    user) / its tokens/s/GPU."""
    helix = pareto_front([p for p in points if p.helix])
    ratios = []
    for p in pareto_front([p for p in points if not p.helix]):
        ok = [q.tokens_per_s_per_gpu for q in helix if q.tokens_per_s_per_user >= p.tokens_per_s_per_user]
        if ok:
            ratios.append(max(ok) / p.tokens_per_s_per_gpu)
    return max(ratios, default=float("nan"))


def main() -> None:
    hw = load_hardware("gb200-nvl72")
    wl = Workload(kind="decode", batch=1, seq=1, context=1 << 20, weight_dtype="fp4",
                  kv_dtype="fp4")
    rows = []
    for name, (path, args) in MODELS.items():
        t0 = time.perf_counter()
        loaded = load_graph(resolve_source(path, args))
        points, _ = sweep_points(
            loaded, hardware=hw, workload=wl, gpu_counts=GPUS, batches=BATCHES,
            strategies=DEFAULT_STRATEGIES | BASELINES,
        )
        seconds = time.perf_counter() - t0
        if name == "deepseek-r1":
            rows.append((name, "TTL at fixed batch (x lower)", ttl_ratio_at_fixed_batch(points), 1.5))
            rows.append((name, "batch at same TTL (x larger)", batch_ratio_at_same_ttl(points), 32.0))
        else:
            rows.append((name, "peak interactivity (x higher)", peak_interactivity_ratio(points), 1.13))
            rows.append((name, "throughput/GPU at same interactivity", throughput_ratio_at_same_interactivity(points), 4.0))
        print(f"{name}: {len(points)} plans in {seconds:.1f} s", flush=True)
    print(f"{'model':15s} {'ratio':40s} {'helixplan':>10s} {'paper':>7s}")
    for name, what, ours, paper in rows:
        flag = "" if abs(ours / paper - 1) <= 0.25 else "  (differs >25%)"
        print(f"{name:15s} {what:40s} {ours:10.2f} {paper:7.2f}{flag}")
    print(json.dumps([{"model": r[0], "ratio": r[1], "helixplan": r[2], "paper": r[3]} for r in rows]))
    print()
    explain_llama_floor(hw, wl)


def explain_llama_floor(hw, wl: Workload) -> None:
    """The cost terms behind the Llama-405B ratios: one layer at B=1 under TP 8, KV-duplicating
    TP 16 and Helix KVP 2 × TPA 8 — the KV read (what Helix removes the duplication of)
    against the fixed per-layer terms (kernel floors, collective latency) that bound TTL."""
    import dataclasses

    from cost_models import CostModel
    from ir.mesh import Mesh
    from passes.parallelize.context import PlanContext
    from passes.parallelize.pricing import price
    from passes.parallelize.strategies import BY_NAME

    graph = load_graph(resolve_source(*MODELS["llama3.1-405b"])).graph
    attn = next(b for b in graph.blocks if b.kind == "attention")
    mlp = next(b for b in graph.blocks if b.kind == "mlp")
    layers = sum(1 for b in graph.blocks if b.kind == "attention")
    d = attn.dims
    kv_bytes_per_seq = (wl.context + 1) * d["kv_heads"] * 2 * d["head_dim"] * 0.5  # fp4
    print("Llama-405B, B=1, one layer (µs):  attention = compute + comm; KV read = KV bytes / HBM")
    for mesh, a_name, extras, kv_share in (
        (Mesh.of(tp=8), "tp", {}, 1 / 8),
        (Mesh.of(tp=16), "tp_kvdup", {}, 1 / 8),
        (Mesh.of(kvp=2, tp=8), "helix", {"hopb": 1}, 1 / 16),
    ):
        ctx = PlanContext(workload=wl, cost=CostModel(hardware=hw), mesh=mesh)
        pa, pm = price(attn, BY_NAME[a_name], ctx, **extras), price(mlp, BY_NAME["tp"], ctx)
        kv_read = kv_bytes_per_seq * kv_share / hw.hbm_bytes_per_s
        layer = pa.time_s + pm.time_s
        print(f"  {str(mesh):14s} {a_name:9s} attention {pa.time_s * 1e6:6.1f} (KV read "
              f"{kv_read * 1e6:5.1f}, comm {sum(pa.comm_s.values()) * 1e6:5.1f})  mlp "
              f"{pm.time_s * 1e6:5.1f}  layer {layer * 1e6:6.1f}  x{layers} = TTL "
              f"{layer * layers * 1e3:5.2f} ms")
    ds = load_graph(resolve_source(*MODELS["deepseek-r1"])).graph
    mla = next(b for b in ds.blocks if b.kind == "attention")
    print("DeepSeek-R1 (MLA), one attention block (µs): TP keeps the latent cache whole on every "
          "rank; Helix splits it over kvp")
    for batch in (1, 16):
        for mesh, name, extras in ((Mesh.of(tp=16), "tp", {}), (Mesh.of(kvp=16), "helix", {"hopb": 1})):
            ctx = PlanContext(workload=dataclasses.replace(wl, batch=batch),
                              cost=CostModel(hardware=hw), mesh=mesh)
            p = price(mla, BY_NAME[name], ctx, **extras)
            print(f"  B={batch:<3d} {str(mesh):8s} {name:6s} {p.time_s * 1e6:7.1f}  (comm "
                  f"{sum(p.comm_s.values()) * 1e6:5.1f}; KV cache {p.memory['kv_cache'] / 2**30:5.2f} GiB"
                  " per layer)")
    print("DeepSeek: at B=1 Helix's smaller KV read is offset by its all-to-all and the whole kv_b\n"
          "projection, so TTL at a batch both fit is equal (1.0x; the paper reports 1.5x). At B=16\n"
          "Helix halves attention time, but TP's replicated latent cache (61 layers x 4.5 GiB)\n"
          "no longer fits, so the gain shows as batch at the same TTL (32x) instead.")
    print("At B=1 the KV read is a small share of a layer; collective latency and kernel floors\n"
          "set a TTL floor that Helix does not remove, so its interactivity gain stays small. At\n"
          "larger B every non-duplicating layout (TP<=8 x DP, Helix) reads the same KV bytes per\n"
          "GPU, so throughput per GPU at equal interactivity matches; the paper's 4x is against\n"
          "baselines whose KV is duplicated (TP > KV heads) at the interactivity only they reach.")


if __name__ == "__main__":
    main()
