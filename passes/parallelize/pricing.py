"""Time and memory of one block under one strategy, from the strategy's declarations.

Per GPU, per forward step of the workload. Sizes: a data-parallel replica holds
B_rep = B / dp sequences; a strategy that splits the batch divides that by tp; one that splits
weights divides parameters, heads, FFN width and vocabulary by tp. Kernels are priced by
`cost_models` (roofline with size-dependent efficiency and a launch floor); collectives over
the mesh axis they run on, with the topology's placement.

Training multiplies compute by 3 (backward ≈ 2× forward; 4 with recomputation), adds each
forward collective's transpose in backward, and prices gradients, optimizer state and the
dp-axis collectives by the block's sharding level (`passes.parallelize.training`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cost_models import KernelWork
from ir.graph import Block
from ir.tensor import evaluate
from passes.parallelize.context import PlanContext
from passes.parallelize.strategy import MODEL_AXES, Strategy
from passes.parallelize.training import (
    BACKWARD_FACTOR,
    TRANSPOSE,
    dp_traffic,
    sharded_state_bytes,
)

# Attention partial outputs and their log-sum-exp travel in float32 (Helix's all-to-all,
# ring attention pass-Q's closing all-to-all): the runtime's attend_block computes them so.
PARTIAL_BYTES = 4.0


@dataclass(frozen=True)
class Priced:
    """A block's price under a strategy: seconds and bytes per GPU, with breakdowns."""

    time_s: float
    compute_s: float
    comm_s: dict[str, float] = field(default_factory=dict)
    exposed_comm_s: float = 0.0
    memory: dict[str, float] = field(default_factory=dict)
    # training: forward and backward compute not busy hiding the block's own collectives,
    # and the level-3 all-gathers (forward, backward) a neighbour block hides
    # (training.prefetch_exposed_s)
    spare_forward_s: float = 0.0
    spare_backward_s: float = 0.0
    prefetch_s: tuple[float, float] = (0.0, 0.0)

    @property
    def memory_bytes(self) -> float:
        return float(sum(self.memory.values()))


@dataclass(frozen=True)
class LocalSizes:
    batch: int
    tokens: int
    context: int
    weight_split: int
    norm_token_split: int

    @property
    def rows(self) -> int:
        """Token rows a projection processes on this GPU."""
        return self.batch * self.tokens


def local_sizes(strategy: Strategy, ctx: PlanContext) -> LocalSizes:
    n = strategy.degree(ctx)
    wl = ctx.workload
    return LocalSizes(
        batch=ctx.replica_batch() // (n if strategy.splits_batch else 1),
        tokens=ctx.replica_tokens(),
        context=wl.context,
        weight_split=n if strategy.splits_weights else 1,
        norm_token_split=n if strategy.splits_norm_tokens else 1,
    )


def split_param_count(block: Block, split: int) -> float:
    """Parameters per GPU when a strategy splits the block's weights `split` ways. Latent
    (MLA) attention keeps its low-rank down-projections and their norms whole (their outputs
    are shared by every head); only the per-head projections split. A norm keeps its weight
    whole (`whole_param_count`)."""
    whole = whole_param_count(block, split)
    return whole + (block.param_count - whole) / split


def whole_param_count(block: Block, split: int) -> float:
    """Of a block whose weights a strategy splits `split` ways, the parameters every rank still
    holds whole: a norm's weight (tp_sp splits a norm's tokens, not its weight) and MLA's
    low-rank down-projections and their norms (0 for other blocks)."""
    if split == 1:
        return 0.0
    if block.kind == "norm":
        return float(block.param_count)
    if block.kind != "attention" or "kv_lora_rank" not in block.dims:
        return 0.0
    d = block.dims
    hidden, q_rank = d["hidden"], d.get("q_lora_rank") or 0
    latent = d["kv_lora_rank"] + d.get("qk_rope_head_dim", 0)
    return float(hidden * q_rank + q_rank + hidden * latent + d["kv_lora_rank"])


def projection_work(ctx: PlanContext, rows: int, params: float, hidden: int) -> KernelWork:
    """All of a block's weight matmuls as one GEMM-family kernel: 2·rows·params FLOPs, the
    weights read once, activations in and out."""
    width = params / max(hidden, 1)
    nbytes = params * ctx.weight_bytes + rows * (hidden + width) * ctx.act_bytes
    dtype = ctx.workload.weight_dtype if ctx.workload.weight_dtype != "fp32" else "fp32"
    return KernelWork(kind="gemm", flops=2.0 * rows * params, nbytes=nbytes, dtype=dtype)


def _elementwise(ctx: PlanContext, nbytes: float) -> float:
    return ctx.cost.elementwise(nbytes) if nbytes > 0 else 0.0


def attention_kernel_s(block: Block, ctx: PlanContext, s: LocalSizes) -> float:
    d = block.dims
    q_heads = d["q_heads"] // s.weight_split
    act = ctx.workload.act_dtype if ctx.workload.act_dtype != "fp32" else "fp32"
    expand_s = 0.0
    if block.traits.get("latent_one_head"):
        # transformers' MLA: every step kv_b_proj expands the whole cached latent (L + T
        # tokens) to this rank's heads' K (no-rope part) and V, then attends per head.
        nope = d["head_dim"] - d.get("qk_rope_head_dim", 0)
        params = d["kv_lora_rank"] * q_heads * (nope + d["v_head_dim"])
        rows = s.batch * (s.context + s.tokens)
        expand_s = ctx.cost.kernel(projection_work(ctx, rows, params, d["kv_lora_rank"])) if rows else 0.0
        shape = dict(q_heads=q_heads, kv_heads=q_heads, head_dim=d["head_dim"], v_head_dim=d["v_head_dim"])
    elif "kv_lora_rank" in d:
        shape = dict(
            q_heads=q_heads,
            kv_heads=1,
            head_dim=d["kv_lora_rank"] + d.get("qk_rope_head_dim", 0),
            v_head_dim=d["kv_lora_rank"],
            latent_kv=True,
        )
    else:
        shape = dict(
            q_heads=q_heads,
            kv_heads=max(1, d["kv_heads"] // s.weight_split),
            head_dim=d["head_dim"],
            v_head_dim=d.get("v_head_dim"),
        )
    kv = ctx.workload.kv_dtype if ctx.workload.kv_dtype != "fp32" else "fp32"
    if s.batch == 0:
        return 0.0
    if ctx.is_decode:
        return expand_s + ctx.cost.attention_decode(
            batch=s.batch, kv_len=s.context + s.tokens, q_len=s.tokens, dtype=act, kv_dtype=kv, **shape
        )
    return expand_s + ctx.cost.attention_prefill(
        batch=s.batch, seq=s.tokens, cached=s.context, causal=True, dtype=act, kv_dtype=kv, **shape
    )


def _moe_work(block: Block, ctx: PlanContext, s: LocalSizes) -> list[KernelWork]:
    d = block.dims
    hidden, experts, top_k, ffn = d["hidden"], d["experts"], d["top_k"], d["ffn"]
    per_expert = (3 if block.traits.get("gated", 1) else 2) * hidden * ffn / s.weight_split
    rows = s.rows
    active = min(experts, rows * top_k)
    dtype = ctx.workload.weight_dtype
    routed = KernelWork(
        kind="gemm",
        flops=2.0 * rows * top_k * per_expert,
        nbytes=active * per_expert * ctx.weight_bytes + 2 * rows * top_k * hidden * ctx.act_bytes,
        dtype=dtype,
    )
    work = [routed, projection_work(ctx, rows, hidden * experts, hidden)]
    if d.get("shared_experts"):
        work.append(projection_work(ctx, rows, d["shared_experts"] * per_expert, hidden))
    return work


def compute_seconds(block: Block, ctx: PlanContext, s: LocalSizes) -> float:
    """Forward compute of the block on one GPU."""
    if s.batch == 0:
        return 0.0
    hidden = block.dims.get("hidden", 1)
    rows, e = s.rows, ctx.act_bytes
    if block.kind == "attention":
        params = split_param_count(block, s.weight_split)
        t = ctx.cost.kernel(projection_work(ctx, rows, params, hidden))
        return t + attention_kernel_s(block, ctx, s) + _elementwise(ctx, 6 * rows * hidden * e)
    if block.kind == "mlp":
        params = block.param_count / s.weight_split
        ffn = block.dims.get("ffn", hidden) // s.weight_split
        return ctx.cost.kernel(projection_work(ctx, rows, params, hidden)) + _elementwise(
            ctx, 3 * rows * ffn * e
        )
    if block.kind == "moe":
        return sum(ctx.cost.kernel(w) for w in _moe_work(block, ctx, s)) + _elementwise(
            ctx, 4 * rows * hidden * e
        )
    if block.kind == "lm_head":
        vocab = block.dims["vocab"]
        rows = lm_head_rows(ctx, s.batch, s.rows)
        return ctx.cost.kernel(projection_work(ctx, rows, vocab * hidden / s.weight_split, hidden))
    if block.kind == "embedding":
        return _elementwise(ctx, 2 * rows * hidden * e)
    if block.kind == "norm":
        return _elementwise(ctx, 2 * rows * hidden * e / s.norm_token_split)
    nbytes = evaluate(block.bytes_moved, B=s.batch, T=s.tokens, L=s.context)
    return _elementwise(ctx, float(nbytes))


def lm_head_rows(ctx: PlanContext, batch: int, rows: int) -> int:
    """Inference needs only each sequence's last logits (the next token); training all."""
    return rows if ctx.is_train else batch


def kv_cache_bytes(block: Block, ctx: PlanContext, s: LocalSizes) -> float:
    if block.kind != "attention" or ctx.is_train:
        return 0.0
    d = block.dims
    tokens = s.context + s.tokens
    if "kv_lora_rank" in d:
        per_token = d["kv_lora_rank"] + d.get("qk_rope_head_dim", 0)
    else:
        kv_heads = max(1, d["kv_heads"] // s.weight_split)
        per_token = kv_heads * (d["head_dim"] + d.get("v_head_dim", d["head_dim"]))
    return s.batch * tokens * per_token * ctx.kv_bytes


def training_activation_bytes(block: Block, ctx: PlanContext, s: LocalSizes) -> float:
    """Activations a block keeps for backward (no recomputation): hidden-sized tensors per
    token row, split by tp where the strategy splits them."""
    d = block.dims
    hidden = d.get("hidden", 1)
    rows, e = s.rows, ctx.act_bytes
    if block.kind == "attention":
        inner = (d["q_heads"] * d.get("head_dim", 1) * 3) / s.weight_split
        return rows * (hidden / s.norm_token_split + inner) * e
    if block.kind in ("mlp", "moe"):
        ffn = d.get("ffn", hidden) * (d.get("top_k", 1) + d.get("shared_experts", 0))
        return rows * (hidden / s.norm_token_split + 3 * ffn / s.weight_split) * e
    if block.kind == "norm":
        return rows * hidden * e / s.norm_token_split
    if block.kind == "lm_head":
        return rows * (hidden * e + d["vocab"] / s.weight_split * 4.0)
    return 0.0


def price(block: Block, strategy: Strategy, ctx: PlanContext, **extras: int) -> Priced:
    """Time (objective contribution) and per-GPU memory of `block` under `strategy` (with the
    strategy's extra parameters, e.g. Helix's `hopb` batch slices; in training the dp
    sharding level `zero` and activation recomputation `recompute`)."""
    if strategy.price is not None:
        return strategy.price(block, ctx, **extras)
    s = local_sizes(strategy, ctx)
    forward = compute_seconds(block, ctx, s)
    tokens = ctx.replica_tokens()
    rows = ctx.replica_batch() * tokens if not strategy.splits_batch else s.rows
    if block.kind == "lm_head":
        rows = lm_head_rows(ctx, rows // tokens, rows)
    comm: dict[str, float] = {}
    backward_comm: dict[str, float] = {}
    for c in strategy.collectives:
        if ctx.workload.kind not in c.phases:
            continue
        nbytes = c.bytes_of(block, rows, ctx.act_bytes)
        _add_collective(comm, ctx, c.kind, nbytes, c.axes)
        if ctx.is_train and c.backward is not None:
            kind = TRANSPOSE[c.kind] if c.backward == "transpose" else c.backward
            if c.backward_bytes_of is not None:
                nbytes = c.backward_bytes_of(block, rows, ctx.act_bytes)
            _add_collective(backward_comm, ctx, kind, nbytes, c.axes)
    weights = split_param_count(block, s.weight_split)
    memory = {"weights": weights * ctx.weight_bytes, "kv_cache": kv_cache_bytes(block, ctx, s)}
    if not ctx.is_train:
        # a weight this block reads but another owns (a tied LM head's table), in this
        # block's layout: a second copy where the layouts differ (passes/shared_params.py).
        # A training plan holds such a weight in one layout only (planner.api).
        memory["weights"] += block.shared_param_count / s.weight_split * ctx.weight_bytes
        exposed = sum(comm.values())
        return Priced(forward + exposed, forward, comm, exposed, memory)
    return _price_training(
        block, strategy, ctx, s, forward, comm, backward_comm, weights,
        zero=extras.get("zero", 0), recompute=extras.get("recompute", 0),
    )


def _add_collective(
    into: dict[str, float], ctx: PlanContext, kind: str, nbytes: float, axes: tuple[str, ...]
) -> None:
    seconds = ctx.collective_s(kind, nbytes, axes)
    key = f"{kind}:{ctx.axes_label(axes)}"
    if seconds:
        into[key] = into.get(key, 0.0) + seconds


def _price_training(
    block: Block,
    strategy: Strategy,
    ctx: PlanContext,
    s: LocalSizes,
    forward: float,
    comm: dict[str, float],
    backward_comm: dict[str, float],
    params: float,
    *,
    zero: int,
    recompute: int,
) -> Priced:
    """A generic strategy's training price. Weights held whole over the model axes reduce
    their gradients there too: in the generated program every rank's loss is its share of the
    total and gradients reaching a block are partial over the model axes, so the driver
    all-reduces the gradient of every weight held whole by several model ranks — a replicated
    block's, a norm's under tp_sp, MLA's latent projections under tp — whether or not the
    ranks were fed different tokens."""
    if ctx.group_size(MODEL_AXES) == 1:
        held_whole = 0.0
    elif not strategy.splits_weights:
        held_whole = float(block.param_count)
    else:
        held_whole = whole_param_count(block, s.weight_split)
    return training_price(
        ctx, forward=forward, comm=comm, backward_comm=backward_comm, params=params,
        model_reduced_params=held_whole,
        activations=training_activation_bytes(block, ctx, s),
        kept_input=s.rows * block.dims.get("hidden", 1) * ctx.act_bytes / s.norm_token_split,
        zero=zero, recompute=recompute,
    )


def training_price(
    ctx: PlanContext,
    *,
    forward: float,
    comm: dict[str, float],
    backward_comm: dict[str, float],
    params: float,
    model_reduced_params: float,
    activations: float,
    kept_input: float,
    zero: int,
    recompute: int,
) -> Priced:
    """Forward + backward (2× forward) + recomputed forward, the strategy's collectives and
    their transposes on the critical path, and the gradient / parameter collectives over dp
    (by sharding level, of the `params` this GPU holds) and over the model axes (of the
    `model_reduced_params` held whole there but fed different tokens) overlapped with compute
    (`passes.parallelize.training`; level-3 gathers are left to the neighbour blocks'
    edge, `prefetch_s`). Memory: the state at level `zero` and the activations
    kept for backward (`kept_input`, the block's input, when it is recomputed)."""
    backward = forward * BACKWARD_FACTOR + forward * recompute
    total: dict[str, float] = {}
    for part, times in ((comm, 1 + recompute), (backward_comm, 1)):
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + times * v
    model_axes_s = sum(total.values())
    extra = {}
    if model_reduced_params:
        seconds = ctx.collective_s("all_reduce", model_reduced_params * ctx.weight_bytes, MODEL_AXES)
        if seconds:
            extra["all_reduce:grads_tp"] = seconds
    dp = dp_traffic(params, ctx, zero, forward=forward, backward=backward, backward_extra=extra)
    total.update(dp.seconds)
    exposed = model_axes_s + dp.exposed_s
    compute = forward + backward + dp.slowdown_s
    memory = {"kv_cache": 0.0, **sharded_state_bytes(params, ctx, zero)}
    memory["activations"] = kept_input if recompute else activations
    return Priced(compute + exposed, compute, total, exposed, memory,
                  spare_forward_s=dp.spare_s[0], spare_backward_s=dp.spare_s[1], prefetch_s=dp.prefetch_s)
