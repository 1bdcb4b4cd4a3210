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
from dataclasses import replace

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
    if not block.traits.get("sdpa", 1):
        return ("ring attention replaces one scaled_dot_product_attention; this block computes "
                "attention eagerly (matmul, softmax, matmul)")
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


def _with_split(ctx: PlanContext, seq: int, context: int) -> PlanContext:
    return replace(ctx, workload=replace(ctx.workload, seq=seq, context=context))


def _advantage_s(block: Block, ctx: PlanContext, seq: int, total: int) -> float:
    """pass-KV time minus pass-Q time (one block) with `seq` new of `total` tokens."""
    at = _with_split(ctx, seq, total - seq)
    return price_cp(block, at, variant="cp_pass_kv").time_s - price_cp(block, at, variant="cp_pass_q").time_s


def crossover_new_tokens(block: Block, ctx: PlanContext) -> int | None:
    """The fewest new tokens (of this workload's T + L) at which pass-KV is no slower than
    pass-Q, by bisection (pass-Q's edge shrinks as the new-token share grows); None when
    pass-Q wins even for a full prefill."""
    total = ctx.workload.seq + ctx.workload.context
    if _advantage_s(block, ctx, total, total) > 0:
        return None
    low, high = 1, total  # pass-KV wins at `high`
    if _advantage_s(block, ctx, low, total) <= 0:
        return low
    while high - low > 1:
        mid = (low + high) // 2
        if _advantage_s(block, ctx, mid, total) <= 0:
            high = mid
        else:
            low = mid
    return high


def explain_cp(block: Block, ctx: PlanContext) -> list[str]:
    """Why pass-KV or pass-Q: both variants' time at this workload, the crossover of the
    cost model against the message-size rule of thumb T/(T+L) = 2K/Q."""
    wl = ctx.workload
    total = wl.seq + wl.context
    kv = price_cp(block, ctx, variant="cp_pass_kv")
    q = price_cp(block, ctx, variant="cp_pass_q")
    tk, tq = ring_terms(block, ctx, "cp_pass_kv"), ring_terms(block, ctx, "cp_pass_q")
    d = block.dims
    rule = 2 * d["kv_heads"] / d["q_heads"]
    cross = crossover_new_tokens(block, ctx)
    where = (
        "pass-Q wins at every new-token share" if cross is None
        else f"pass-KV wins from T = {cross} new tokens, T/(T+L) = {cross / total:.2%}"
    )
    us = 1e6
    return [
        f"new-token share T/(T+L) = {wl.seq / total:.2%} ({wl.seq} new, {wl.context} cached); "
        f"per block pass-KV {kv.time_s * us:.1f} µs, pass-Q {q.time_s * us:.1f} µs",
        f"per ring step ({tk['steps']:.0f} ranks): attention {tk['step_compute_s'] * us:.1f} µs; "
        f"KV send {tk['step_send_s'] * us:.1f} µs (exposed {tk['exposed_ring_s'] * us:.1f} µs in all); "
        f"Q send {tq['step_send_s'] * us:.1f} µs (exposed {tq['exposed_ring_s'] * us:.1f} µs) + "
        f"all-to-all of partials {tq['final_all_to_all_s'] * us:.1f} µs",
        f"crossover at T+L = {total}: {where}; rule of thumb 2·K/Q = {rule:.2%} (message sizes "
        "only: it ignores that a step's attention hides the KV send and that pass-Q ends in an "
        "all-to-all as large as all its query sends)",
    ]


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
        explain=explain_cp,
    )


CP_PASS_KV = _strategy(
    "cp_pass_kv", "ring attention over cp: KV blocks rotate (N−1 overlapped send/recv), LSE merge"
)
CP_PASS_Q = _strategy(
    "cp_pass_q", "ring attention over cp: queries rotate, all-to-all of partials, LSE merge"
)
