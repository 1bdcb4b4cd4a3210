"""Context parallelism for prefill: ring attention, pass-KV and pass-Q.

The new tokens are split over the cp axis in the load-balanced layout (2·N chunks, rank i
holds chunks i and 2N−1−i, T padded to a multiple of 2N), so every block but attention works
on T/N local tokens; attention heads may be split over tp inside a node as in `tp`. A cached
prefix of L tokens stays where it lives (L/N contiguous slots per cp rank); only the new
tokens are balanced.

Per GPU, with N = cp, T_c = T/N local new tokens, L_c = L/N cached, K_t = K/tp KV heads and
Q_t = Q/tp query heads:
* compute per ring step: 1/N of this rank's attention, i.e. (causal pairs of T new over L
  cached)/N² (balanced chunks make every step's share equal);
* pass-KV: each of the N−1 steps sends/receives one KV block, B·(T_c + L_c)·K_t·(d_k+d_v)
  elements; exposed per step = max(0, send/recv − step compute);
* pass-Q: each step sends/receives one query block, B·T_c·Q_t·d_k elements, overlapped the
  same way; then an all-to-all over cp returns the partial outputs and their log-sum-exp
  (B·T_c·Q_t·(d_v + 2) elements per peer), not overlapped.
Pass-KV moves 2·K_t·(T+L)/N per step, pass-Q Q_t·T/N: they break even near
T/(T+L) = 2K/Q — pass-Q wins with a big cached prefix (few new tokens per cached one), pass-KV
for full prefill, where the step's attention also hides its send.
"""

from __future__ import annotations

import math

from cost_models import KernelWork
from cost_models.compute import attention_prefill_work
from ir.graph import Block
from passes.parallelize.context import PlanContext
from passes.parallelize.pricing import Priced
from passes.parallelize.strategy import REPLICATE, Strategy

VARIANTS = ("cp_pass_kv", "cp_pass_q")


def cp_requirements(block: Block, ctx: PlanContext) -> str | None:
    d = block.dims
    tp = ctx.mesh.size("tp")
    if ctx.mesh.size("cp") == 1:
        return "context parallelism needs a cp axis (size 1 on this mesh)"
    if ctx.mesh.size("kvp") > 1:
        return "context parallelism does not compose with a kvp axis"
    if "kv_lora_rank" in d:
        return "latent (MLA) attention is not split by context parallelism yet"
    if d["kv_heads"] % tp or d["q_heads"] % tp:
        return f"q_heads={d['q_heads']} and kv_heads={d['kv_heads']} must be divisible by tp={tp}"
    return None


def local_new_tokens(ctx: PlanContext) -> int:
    """New tokens per cp rank: T padded to a multiple of 2·cp, split over cp."""
    n = ctx.mesh.size("cp")
    return math.ceil(ctx.workload.seq / (2 * n)) * 2


def _shapes(block: Block, ctx: PlanContext) -> dict:
    d = block.dims
    tp = ctx.mesh.size("tp")
    return dict(
        q_heads=d["q_heads"] // tp, kv_heads=d["kv_heads"] // tp, head_dim=d["head_dim"],
        v_head_dim=d.get("v_head_dim", d["head_dim"]),
    )


def ring_terms(block: Block, ctx: PlanContext, variant: str) -> dict[str, float]:
    """The per-step quantities of one ring: step compute, per-step send/recv, steps, the
    final all-to-all (pass-Q), in seconds. Exposed for the report and the sweep."""
    wl = ctx.workload
    n = ctx.mesh.size("cp")
    batch = ctx.replica_batch()
    shape = _shapes(block, ctx)
    tc, lc = local_new_tokens(ctx), math.ceil(wl.context / n)
    act = wl.act_dtype if wl.act_dtype != "fp32" else "fp32"
    kv = wl.kv_dtype if wl.kv_dtype != "fp32" else "fp32"
    whole = attention_prefill_work(
        batch=batch, seq=tc * n, cached=lc * n, causal=True, dtype=act, kv_dtype=kv, **shape
    )
    step = KernelWork(kind="attention_prefill", flops=whole.flops / n**2, nbytes=whole.nbytes / n**2, dtype=act)
    step_s = ctx.cost.kernel(step)
    kd, vd = shape["head_dim"], shape["v_head_dim"]
    if variant == "cp_pass_kv":
        msg = batch * (tc + lc) * shape["kv_heads"] * (kd + vd) * ctx.kv_bytes
        final = 0.0
    else:
        msg = batch * tc * shape["q_heads"] * kd * ctx.act_bytes
        partials = batch * tc * shape["q_heads"] * (vd * ctx.act_bytes + 4.0) * n
        final = ctx.collective_s("all_to_all", partials, ("cp",))
    send_s = max(
        ctx.cost.collective("send_recv", msg, (g[0], g[1])) for g in ctx.mesh.groups("cp")
    )
    return {
        "steps": float(n), "step_compute_s": step_s, "step_send_s": send_s,
        "exposed_ring_s": (n - 1) * max(0.0, send_s - step_s), "final_all_to_all_s": final,
        "attention_s": n * step_s, "message_bytes": float(msg),
    }


def price_cp(block: Block, ctx: PlanContext, *, variant: str) -> Priced:
    wl = ctx.workload
    tp = ctx.mesh.size("tp")
    batch = ctx.replica_batch()
    rows = batch * local_new_tokens(ctx)
    hidden = block.dims["hidden"]
    params = block.param_count / tp
    w = ctx.weight_bytes
    gemm = ctx.cost.kernel(KernelWork(
        kind="gemm", flops=2.0 * rows * params,
        nbytes=params * w + rows * (hidden + params / hidden) * ctx.act_bytes, dtype=wl.weight_dtype,
    ))
    terms = ring_terms(block, ctx, variant)
    pointwise = ctx.cost.elementwise(6 * rows * hidden * ctx.act_bytes)
    all_reduce_s = ctx.collective_s("all_reduce", rows * hidden * ctx.act_bytes, ("tp",))
    compute = gemm + terms["attention_s"] + pointwise
    exposed = terms["exposed_ring_s"] + terms["final_all_to_all_s"] + all_reduce_s
    comm = {
        "send_recv:cp": terms["step_send_s"] * (terms["steps"] - 1),
        "all_to_all:cp": terms["final_all_to_all_s"],
        "all_reduce:tp": all_reduce_s,
    }
    shape = _shapes(block, ctx)
    n = ctx.mesh.size("cp")
    kv_tokens = math.ceil(wl.context / n) + local_new_tokens(ctx)
    per_token = shape["kv_heads"] * (shape["head_dim"] + shape["v_head_dim"])
    memory = {"weights": params * w, "kv_cache": batch * kv_tokens * per_token * ctx.kv_bytes}
    return Priced(compute + exposed, compute, {k: v for k, v in comm.items() if v}, exposed, memory)


def _strategy(variant: str, summary: str) -> Strategy:
    def price(block: Block, ctx: PlanContext) -> Priced:
        return price_cp(block, ctx, variant=variant)

    return Strategy(
        name=variant,
        kinds=frozenset({"attention"}),
        axes=("cp", "tp"),
        summary=summary,
        layout_in=REPLICATE,
        layout_out=REPLICATE,
        requirements=(cp_requirements,),
        price=price,
        workloads=frozenset({"prefill"}),
    )


CP_PASS_KV = _strategy(
    "cp_pass_kv", "ring attention over cp: KV blocks rotate (N−1 overlapped send/recv), LSE merge"
)
CP_PASS_Q = _strategy(
    "cp_pass_q", "ring attention over cp: queries rotate, all-to-all of partials, LSE merge"
)
