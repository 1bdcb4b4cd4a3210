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

Training (the ring backward, as the generated program runs it): every step's attention is
recomputed from the saved log-sum-exp and differentiated, 2× the forward step
(BACKWARD_FACTOR), and the ring traffic comes twice, overlapped by the same rule as forward:
* pass-KV: the K/V blocks travel again (N−1 sends) and beside them a dK/dV accumulator in
  float32 (ACCUMULATOR_BYTES) that follows its block and reaches the owner after N sends; per
  step exposed = max(0, K/V send + accumulator send − backward step), plus the last
  accumulator hop, which nothing hides;
* pass-Q: each rank's queries travel again packed with their output gradient, delta and
  log-sum-exp (B·T_c·Q_t·(d_k + d_v + 2) float32 elements per step, overlapped likewise);
  dK/dV stay local, and one all-to-all of the dq partials (B·T_c·Q_t·d_k per peer) ends it.
The tp all-reduce of the forward has its transpose in backward; recomputation re-runs the
forward (its ring too). The block's weights are replicated over cp (and dp): their gradients
are all-reduced over cp, and over dp by the block's sharding level (training.dp_collectives),
overlapped with the backward.
"""

from __future__ import annotations

import math
from dataclasses import replace

from cost_models import KernelWork
from cost_models.compute import attention_prefill_work
from ir.graph import Block
from passes.parallelize.context import PlanContext
from passes.parallelize.pricing import PARTIAL_BYTES, LocalSizes, Priced, training_activation_bytes
from passes.parallelize.strategy import REPLICATE, Strategy
from passes.parallelize.training import (
    BACKWARD_FACTOR,
    dp_traffic,
    sharded_state_bytes,
)

VARIANTS = ("cp_pass_kv", "cp_pass_q")
# Why a decode workload gets no cp strategy (what `cp decode` would be is helix with tpa=1).
DECODE_HINT = (
    "a decode step's few new tokens leave nothing to split over cp (the ring would pad them to "
    "2·cp every step). Decode with the KV cache split along the sequence is helix: with tpa=1 "
    "it is what context-parallel decode would be (every rank attends the new tokens' queries "
    "over its slice of the cache, one log-sum-exp merge, new K/V appended round-robin, no "
    "padding) and it also splits the output projection and the FFN over those ranks; force "
    "layers.*.attention=helix(kvp=N,tpa=1)"
)
ACCUMULATOR_BYTES = 4.0  # the ring backward accumulates and sends gradients in float32


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
        partials = batch * tc * shape["q_heads"] * (vd + 1) * PARTIAL_BYTES * n
        final = ctx.collective_s("all_to_all", partials, ("cp",))
    send_s = ctx.ring_send_s(msg, "cp")
    terms = {
        "steps": float(n), "step_compute_s": step_s, "step_send_s": send_s,
        "exposed_ring_s": (n - 1) * max(0.0, send_s - step_s), "final_all_to_all_s": final,
        "attention_s": n * step_s, "message_bytes": float(msg),
    }
    if ctx.is_train:
        terms.update(_backward_ring_terms(ctx, variant, terms, batch, tc, lc, shape))
    return terms


def _backward_ring_terms(
    ctx: PlanContext, variant: str, fwd: dict[str, float], batch: int, tc: int, lc: int, shape: dict
) -> dict[str, float]:
    """The ring of the backward (module docstring): its step compute, per-step sends and
    what of them is exposed, and its closing transfer (pass-KV: the last accumulator hop;
    pass-Q: the all-to-all of dq partials)."""
    n = int(fwd["steps"])
    step_s = BACKWARD_FACTOR * fwd["step_compute_s"]
    kd, vd = shape["head_dim"], shape["v_head_dim"]
    if variant == "cp_pass_kv":
        grad_msg = batch * (tc + lc) * shape["kv_heads"] * (kd + vd) * ACCUMULATOR_BYTES
        grad_s = ctx.ring_send_s(grad_msg, "cp")
        per_step = fwd["step_send_s"] + grad_s
        sends = (n - 1) * per_step + grad_s
        final = grad_s
    else:
        grad_msg = batch * tc * shape["q_heads"] * (kd + vd + 2) * ACCUMULATOR_BYTES
        per_step = ctx.ring_send_s(grad_msg, "cp")
        sends = (n - 1) * per_step
        partials = batch * tc * shape["q_heads"] * kd * ACCUMULATOR_BYTES * n
        final = ctx.collective_s("all_to_all", partials, ("cp",))
    return {
        "backward_step_compute_s": step_s, "backward_message_bytes": float(grad_msg),
        "backward_sends_s": sends, "backward_exposed_ring_s": (n - 1) * max(0.0, per_step - step_s),
        "backward_final_s": final,
    }


def price_cp(block: Block, ctx: PlanContext, *, variant: str, zero: int = 0, recompute: int = 0) -> Priced:
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
    if ctx.is_train:
        return _price_cp_training(
            block, ctx, variant, terms, compute, exposed, comm, all_reduce_s, params,
            zero=zero, recompute=recompute,
        )
    return Priced(compute + exposed, compute, {k: v for k, v in comm.items() if v}, exposed, memory)


def _price_cp_training(
    block: Block, ctx: PlanContext, variant: str, terms: dict[str, float], forward: float,
    forward_exposed: float, comm: dict[str, float], all_reduce_s: float, params: float,
    *, zero: int, recompute: int,
) -> Priced:
    """Forward (again when recomputed), the ring backward (module docstring) and the
    gradient collectives over cp and dp, overlapped with the backward compute."""
    backward = BACKWARD_FACTOR * forward + recompute * forward
    runs = 1 + recompute
    exposed = (
        runs * forward_exposed + terms["backward_exposed_ring_s"] + terms["backward_final_s"]
        + all_reduce_s
    )
    total = {k: runs * v for k, v in comm.items()}
    total["send_recv:cp_backward"] = terms["backward_sends_s"]
    if variant == "cp_pass_q":  # pass-KV's closing transfer is its last accumulator send
        total["all_to_all:cp_backward"] = terms["backward_final_s"]
    total["all_reduce:tp"] += all_reduce_s  # its transpose in backward
    dp = dp_traffic(params, ctx, zero, forward=forward, backward=backward)
    total.update(dp.seconds)
    exposed += dp.exposed_s
    compute = forward + backward + dp.slowdown_s
    tp = ctx.mesh.size("tp")
    sizes = LocalSizes(
        batch=ctx.replica_batch(), tokens=local_new_tokens(ctx), context=0, weight_split=tp,
        norm_token_split=1,
    )
    activations = (
        sizes.rows * block.dims["hidden"] * ctx.act_bytes if recompute
        else training_activation_bytes(block, ctx, sizes)
    )
    memory = {"kv_cache": 0.0, **sharded_state_bytes(params, ctx, zero), "activations": activations}
    return Priced(compute + exposed, compute, {k: v for k, v in total.items() if v}, exposed, memory,
                  spare_forward_s=dp.spare_s[0], spare_backward_s=dp.spare_s[1], prefetch_s=dp.prefetch_s)


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


def explain_cp(block: Block, ctx: PlanContext, extras: dict[str, int]) -> list[str]:
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
    lines = [
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
    if ctx.is_train:
        lines.append(
            f"backward ring: attention backward {tk['backward_step_compute_s'] * us:.1f} µs per step; "
            f"pass-KV K/V + dK/dV sends {tk['backward_sends_s'] * us:.1f} µs in all (exposed "
            f"{tk['backward_exposed_ring_s'] * us:.1f} µs + last accumulator hop "
            f"{tk['backward_final_s'] * us:.1f} µs); pass-Q query + gradient sends "
            f"{tq['backward_sends_s'] * us:.1f} µs (exposed {tq['backward_exposed_ring_s'] * us:.1f} µs) "
            f"+ all-to-all of dq partials {tq['backward_final_s'] * us:.1f} µs"
        )
    return lines


def _strategy(variant: str, summary: str) -> Strategy:
    def price(block: Block, ctx: PlanContext, **extras: int) -> Priced:
        return price_cp(block, ctx, variant=variant, **extras)

    return Strategy(
        name=variant,
        kinds=frozenset({"attention"}),
        axes=("cp", "tp"),
        summary=summary,
        layout_in=REPLICATE,
        layout_out=REPLICATE,
        requirements=(cp_requirements,),
        price=price,
        workloads=frozenset({"prefill", "train"}),
        workload_hint=DECODE_HINT,
        explain=explain_cp,
    )


CP_PASS_KV = _strategy(
    "cp_pass_kv", "ring attention over cp: KV blocks rotate (N−1 overlapped send/recv), LSE merge"
)
CP_PASS_Q = _strategy(
    "cp_pass_q", "ring attention over cp: queries rotate, all-to-all of partials, LSE merge"
)
