"""Expert parallelism over the model group with a replicated residual stream.

The E routed experts are split over the n = kvp×tp ranks (E/n each); every rank runs the
router on all of its replica's tokens, computes the (token, expert) pairs whose expert it
holds and returns a partial sum; one all-reduce of B·T·H combines them (the shared experts,
Megatron TP over the same ranks, join that reduction). No token moves before the experts:
the dispatch is the routing every rank already has, the combine the all-reduce.

Cost terms per GPU (R = tokens on the replica, k experts per token, skew s ≥ 1 the load of
the busiest rank over the mean, `Workload.expert_skew`):
* experts: one grouped GEMM over the active local experts. Rows: s·R·k/n (token, expert)
  pairs, each padded up to whole GEMM tiles of `GEMM_TILE_ROWS` rows per expert (a
  grouped GEMM computes on tiles, so 3 tokens on an expert cost a 64-row tile); weight
  bytes: the local experts that receive any token, (E/n)·(1 − (1 − k/E)^R) in expectation
  (every local expert once R·k ≫ E) — at decode batch sizes weight reads dominate.
* router (replicated), shared experts (/n), the elementwise SwiGLU and weighting.
* the all-reduce of R·H over kvp×tp.
Memory: router + E/n experts + shared experts / n.

`ep_dispatch` (attention data parallel + EP) keeps the stream split by batch over the n ranks:
router and shared experts run on the rank's R/n tokens with replicated weights; each token
goes once to every distinct rank holding one of its experts — expected
n·(1 − (1 − 1/n)^k) ranks per token (k ≥ n: nearly all) — so dispatch and combine each move
(R/n)·that·H elements per rank by all-to-all; the experts are priced as for `ep` (the
busiest rank receives s·R·k/n pairs). Before the dispatch, as the program's `moe_dispatch`
runs it, a blocking all-to-all exchanges the row counts (n int64 per rank, `:counts`) and the
rows' expert ids travel by their own all-to-all (k int64 per row, `:routing`); the routing
weights (k per row) by a third in inference, packed with the token rows in training. Counts
and ids have no backward.

`tp_ep` (TP×EP) splits the experts over kvp and each expert's FFN columns over tp: a rank
holds E/kvp experts' 1/tp slices; the expert GEMM reads 1/(kvp·tp) of the expert weights
with fewer, wider per-expert row blocks than `ep` over the same ranks (better tile use when
tokens per expert are few); one all-reduce over kvp×tp combines.

Training (`passes.parallelize.training`; the program's backward is each collective's adjoint):
* compute: backward ≈ 2× the forward (the expert GEMMs' input and weight gradients), plus
  the forward once more with recomputation;
* collectives: the combine all-reduce's backward is an all-reduce of the output gradient
  (each rank backpropagates its own share of the loss); `ep_dispatch`'s dispatch and combine
  all-to-alls each have a backward all-to-all of the same volume the other way (the
  combine's returns the output gradients to the expert ranks, the dispatch's the token and
  routing-weight gradients to the tokens' owners); recomputation repeats the forward ones;
* gradients: the expert weights are split over the model group, so only the ranks holding
  the same experts — the dp replicas — reduce them (the ZeRO level shards their optimizer
  state, gradients, weights over dp); weights every rank of the model group holds whole —
  the router, and under `ep_dispatch` the shared experts, fed that rank's tokens only — are
  also all-reduced over kvp×tp;
* activations kept for backward: the block's input and router probabilities, and per
  (token, expert) pair computed here the gathered token, gate, up, SwiGLU output and the
  weighted output (the busiest rank's pairs), the shared experts' intermediates and, for
  `ep_dispatch`, the received and returned token buffers; only the input when recomputed.
"""

from __future__ import annotations

import math

from cost_models import KernelWork
from ir.graph import Block
from passes.parallelize.context import PlanContext
from passes.parallelize.pricing import Priced, training_price
from passes.parallelize.strategy import MODEL_AXES, REPLICATE, SHARD_BATCH, Strategy, batch_divides

GEMM_TILE_ROWS = 64
# `moe_dispatch` exchanges row counts and expert ids as int64
ROUTING_ID_BYTES = 8


def ep_requirements(block: Block, ctx: PlanContext) -> str | None:
    n = ctx.group_size(MODEL_AXES)
    experts = block.dims.get("experts")
    if not experts or not block.dims.get("top_k"):
        return "the block has no experts/top_k dims"
    if experts % n:
        return f"experts={experts} is not divisible by the model group kvp×tp={n}"
    shared_ffn = block.dims.get("shared_experts", 0) * block.dims.get("ffn", 0)
    if shared_ffn % n:
        return f"the shared experts' width {shared_ffn} is not divisible by kvp×tp={n}"
    return None


def active_experts(experts: int, top_k: int, tokens: int) -> float:
    """Expected number of the E experts chosen by at least one of `tokens` tokens (each picks
    k distinct experts; uniform routing)."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def busiest_pairs(ctx: PlanContext, *, local_experts: int, experts: int, top_k: int, tokens: int) -> float:
    """(token, expert) pairs the busiest rank computes when each holds `local_experts` of the
    experts: its even share of tokens·k times the skew, at most k per token."""
    n_groups = experts // local_experts
    return min(tokens * top_k / n_groups * ctx.workload.expert_skew, tokens * min(top_k, local_experts))


def expert_gemm_work(
    ctx: PlanContext, *, local_experts: int, experts: int, top_k: int, tokens: int,
    hidden: int, ffn: int, ffn_split: int = 1,
) -> KernelWork:
    """The grouped expert GEMM of the busiest rank holding `local_experts` experts (each
    expert's FFN columns split `ffn_split` ways) for `tokens` routed tokens."""
    skew = ctx.workload.expert_skew
    n_groups = experts // local_experts
    pairs = busiest_pairs(ctx, local_experts=local_experts, experts=experts, top_k=top_k, tokens=tokens)
    active = max(1.0, min(local_experts, active_experts(experts, top_k, tokens) / n_groups * skew))
    rows_per_expert = pairs / active
    padded = active * math.ceil(rows_per_expert / GEMM_TILE_ROWS) * GEMM_TILE_ROWS
    per_expert = 3 * hidden * ffn / ffn_split
    return KernelWork(
        kind="gemm",
        flops=2.0 * padded * per_expert,
        nbytes=active * per_expert * ctx.weight_bytes + pairs * (2 * hidden + 3 * ffn / ffn_split) * ctx.act_bytes,
        dtype=ctx.workload.weight_dtype,
    )


def moe_parts(block: Block, ctx: PlanContext, rows: int, *, expert_groups: int, ffn_split: int,
              shared_split: int) -> tuple[dict[str, float], dict[str, float]]:
    """(seconds by part, weight bytes by part) of a MoE block on one GPU whose experts are
    split over `expert_groups` rank groups and each expert's FFN over `ffn_split` ranks."""
    d = block.dims
    hidden, experts, top_k, ffn = d["hidden"], d["experts"], d["top_k"], d["ffn"]
    shared = d.get("shared_experts", 0)
    w = ctx.weight_bytes
    router = KernelWork(kind="gemm", flops=2.0 * rows * hidden * experts,
                        nbytes=hidden * experts * w + rows * (hidden + experts) * ctx.act_bytes,
                        dtype=ctx.workload.weight_dtype)
    work = expert_gemm_work(ctx, local_experts=experts // expert_groups, experts=experts,
                            top_k=top_k, tokens=rows, hidden=hidden, ffn=ffn, ffn_split=ffn_split)
    seconds = {
        "router": ctx.cost.kernel(router),
        "experts": ctx.cost.kernel(work),
        "elementwise": ctx.cost.elementwise(4 * rows * top_k * hidden * ctx.act_bytes),
    }
    weights = {
        "router": hidden * experts * w,
        "experts": 3 * hidden * ffn * experts / (expert_groups * ffn_split) * w,
    }
    if shared:
        params = 3 * hidden * ffn * shared / shared_split
        seconds["shared_experts"] = ctx.cost.kernel(KernelWork(
            kind="gemm", flops=2.0 * rows * params,
            nbytes=params * w + rows * (hidden + 3 * ffn * shared / shared_split) * ctx.act_bytes,
            dtype=ctx.workload.weight_dtype,
        ))
        weights["shared_experts"] = params * w
    return seconds, weights


def moe_activation_bytes(block: Block, ctx: PlanContext, *, tokens: int, pairs: float, ffn_split: int,
                         shared_split: int, buffers: float = 0.0) -> float:
    """Activations a MoE block keeps for backward on one GPU (see the module docstring):
    `tokens` input rows with their router probabilities, `pairs` (token, expert) rows,
    the shared experts' intermediates split `shared_split` ways, and `buffers` token rows
    of exchanged hidden vectors."""
    d = block.dims
    hidden, ffn = d["hidden"], d["ffn"]
    shared_width = d.get("shared_experts", 0) * ffn / shared_split
    rows = (tokens * (hidden + d["experts"]) + pairs * (2 * hidden + 3 * ffn / ffn_split)
            + tokens * 3 * shared_width + buffers * hidden)
    return rows * ctx.act_bytes


def moe_priced(block: Block, ctx: PlanContext, seconds: dict[str, float], weights: dict[str, float],
               comm: dict[str, float], *, model_reduced: float, activations: float, tokens: int,
               zero: int, recompute: int, forward_only: frozenset[str] = frozenset()) -> Priced:
    """A MoE strategy's price from its parts: inference adds the exposed collectives; training
    (`training_price`) adds the backward, each collective's adjoint (same kind and bytes:
    all-reduce ↔ all-reduce, all-to-all ↔ all-to-all) except for the `forward_only` ones,
    the gradient reductions over dp of the weights this GPU holds and over kvp×tp of the
    `model_reduced` bytes held whole there."""
    compute = sum(seconds.values())
    comm = {k: v for k, v in comm.items() if v}
    if not ctx.is_train:
        exposed = sum(comm.values())
        return Priced(compute + exposed, compute, comm, exposed, {"weights": sum(weights.values())})
    return training_price(
        ctx, forward=compute, comm=comm,
        backward_comm={k: v for k, v in comm.items() if k not in forward_only},
        params=sum(weights.values()) / ctx.weight_bytes,
        model_reduced_params=model_reduced / ctx.weight_bytes,
        activations=activations, kept_input=tokens * block.dims["hidden"] * ctx.act_bytes,
        zero=zero, recompute=recompute,
    )


def price_ep(block: Block, ctx: PlanContext, *, zero: int = 0, recompute: int = 0) -> Priced:
    n = ctx.group_size(MODEL_AXES)
    rows = ctx.replica_batch() * ctx.workload.seq
    d = block.dims
    seconds, weights = moe_parts(block, ctx, rows, expert_groups=n, ffn_split=1, shared_split=n)
    combine = ctx.collective_s("all_reduce", rows * d["hidden"] * ctx.act_bytes, MODEL_AXES)
    pairs = busiest_pairs(ctx, local_experts=d["experts"] // n, experts=d["experts"], top_k=d["top_k"], tokens=rows)
    return moe_priced(
        block, ctx, seconds, weights, {f"all_reduce:{ctx.axes_label(MODEL_AXES)}": combine},
        model_reduced=weights["router"],
        activations=moe_activation_bytes(block, ctx, tokens=rows, pairs=pairs, ffn_split=1, shared_split=n),
        tokens=rows, zero=zero, recompute=recompute,
    )


def distinct_ranks(ranks: int, top_k: int) -> float:
    """Expected distinct ranks among a token's k experts when experts are split evenly over
    `ranks` (k experts drawn uniformly; each rank missed with probability (1 − 1/n)^k)."""
    return ranks * (1.0 - (1.0 - 1.0 / ranks) ** top_k)


def dispatch_rows(block: Block, ctx: PlanContext) -> float:
    """Token rows one rank sends by the dispatch all-to-all (and receives back by the
    combine): each of its R/n tokens once per distinct rank holding one of its experts."""
    n = ctx.group_size(MODEL_AXES)
    return ctx.replica_batch() * ctx.workload.seq // n * distinct_ranks(n, block.dims["top_k"])


def price_ep_dispatch(block: Block, ctx: PlanContext, *, zero: int = 0, recompute: int = 0) -> Priced:
    n = ctx.group_size(MODEL_AXES)
    rows = ctx.replica_batch() * ctx.workload.seq
    local_rows = rows // n
    d = block.dims
    seconds, weights = moe_parts(block, ctx, rows, expert_groups=n, ffn_split=1, shared_split=1)
    # router, shared experts and elementwise run on this rank's tokens only
    own, _ = moe_parts(block, ctx, local_rows, expert_groups=n, ffn_split=1, shared_split=1)
    seconds = {**{k: v for k, v in own.items() if k != "experts"}, "experts": seconds["experts"]}
    sent = dispatch_rows(block, ctx)
    volume = sent * d["hidden"] * ctx.act_bytes
    routing_weights = sent * d["top_k"] * ctx.act_bytes
    axes = ctx.axes_label(MODEL_AXES)
    routing = ctx.collective_s("all_to_all", sent * d["top_k"] * ROUTING_ID_BYTES, MODEL_AXES)
    if ctx.is_train:  # weights packed with the token rows
        dispatch = ctx.collective_s("all_to_all", volume + routing_weights, MODEL_AXES)
    else:
        dispatch = ctx.collective_s("all_to_all", volume, MODEL_AXES)
        routing += ctx.collective_s("all_to_all", routing_weights, MODEL_AXES)
    comm = {
        f"all_to_all:{axes}:counts": ctx.collective_s("all_to_all", n * ROUTING_ID_BYTES, MODEL_AXES),
        f"all_to_all:{axes}:routing": routing,
        f"all_to_all:{axes}:dispatch": dispatch,
        f"all_to_all:{axes}:combine": ctx.collective_s("all_to_all", volume, MODEL_AXES),
    }
    pairs = busiest_pairs(ctx, local_experts=d["experts"] // n, experts=d["experts"], top_k=d["top_k"], tokens=rows)
    return moe_priced(
        block, ctx, seconds, weights, comm,
        model_reduced=weights["router"] + weights.get("shared_experts", 0.0),
        forward_only=frozenset({f"all_to_all:{axes}:counts", f"all_to_all:{axes}:routing"}),
        activations=moe_activation_bytes(block, ctx, tokens=local_rows, pairs=pairs, ffn_split=1,
                                         shared_split=1, buffers=2 * sent),
        tokens=local_rows, zero=zero, recompute=recompute,
    )


EP = Strategy(
    name="ep",
    kinds=frozenset({"moe"}),
    axes=MODEL_AXES,
    summary="experts split over kvp×tp; each rank computes its experts' tokens; one all-reduce",
    layout_in=REPLICATE,
    layout_out=REPLICATE,
    splits_weights=True,
    requirements=(ep_requirements,),
    price=price_ep,
    workloads=frozenset({"decode", "prefill", "train"}),
)


EP_DISPATCH = Strategy(
    name="ep_dispatch",
    kinds=frozenset({"moe"}),
    axes=MODEL_AXES,
    summary="batch split over kvp×tp (attention DP); tokens all-to-all to their experts' ranks and back",
    layout_in=SHARD_BATCH,
    layout_out=SHARD_BATCH,
    splits_weights=True,
    splits_batch=True,
    requirements=(ep_requirements, batch_divides()),
    price=price_ep_dispatch,
    workloads=frozenset({"decode", "prefill", "train"}),
)


def tp_ep_requirements(block: Block, ctx: PlanContext) -> str | None:
    experts, ffn = block.dims.get("experts"), block.dims.get("ffn")
    if not experts or not block.dims.get("top_k"):
        return "the block has no experts/top_k dims"
    ep, tp = ctx.mesh.size("kvp"), ctx.mesh.size("tp")
    if experts % ep:
        return f"experts={experts} is not divisible by kvp={ep} (experts split over kvp)"
    if ffn % tp:
        return f"the experts' ffn={ffn} is not divisible by tp={tp} (FFN columns split over tp)"
    shared_ffn = block.dims.get("shared_experts", 0) * ffn
    if shared_ffn % (ep * tp):
        return f"the shared experts' width {shared_ffn} is not divisible by kvp×tp={ep * tp}"
    return None


def price_tp_ep(block: Block, ctx: PlanContext, *, zero: int = 0, recompute: int = 0) -> Priced:
    ep, tp = ctx.mesh.size("kvp"), ctx.mesh.size("tp")
    rows = ctx.replica_batch() * ctx.workload.seq
    d = block.dims
    seconds, weights = moe_parts(block, ctx, rows, expert_groups=ep, ffn_split=tp, shared_split=ep * tp)
    combine = ctx.collective_s("all_reduce", rows * d["hidden"] * ctx.act_bytes, MODEL_AXES)
    pairs = busiest_pairs(ctx, local_experts=d["experts"] // ep, experts=d["experts"], top_k=d["top_k"], tokens=rows)
    return moe_priced(
        block, ctx, seconds, weights, {f"all_reduce:{ctx.axes_label(MODEL_AXES)}": combine},
        model_reduced=weights["router"],
        activations=moe_activation_bytes(block, ctx, tokens=rows, pairs=pairs, ffn_split=tp,
                                         shared_split=ep * tp),
        tokens=rows, zero=zero, recompute=recompute,
    )


TP_EP = Strategy(
    name="tp_ep",
    kinds=frozenset({"moe"}),
    axes=MODEL_AXES,
    summary="experts split over kvp, each expert's FFN columns over tp (TP×EP); one all-reduce",
    layout_in=REPLICATE,
    layout_out=REPLICATE,
    splits_weights=True,
    requirements=(tp_ep_requirements,),
    price=price_tp_ep,
    workloads=frozenset({"decode", "prefill", "train"}),
)
