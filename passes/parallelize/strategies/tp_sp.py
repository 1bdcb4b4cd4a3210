"""Tensor parallelism with sequence parallelism: the residual stream stays split along the
new tokens over tp; an all-gather feeds the column-parallel projections and a reduce-scatter
replaces TP's all-reduce. Norms between run on token shards, with no collective of their own
(the attention or MLP beside them gathers and scatters). Prefill and training only."""

from __future__ import annotations

from ir.graph import Block
from passes.parallelize.context import PlanContext
from passes.parallelize.strategies.tp import hidden_bytes, tp_requirements
from passes.parallelize.strategy import MODEL_AXES, SHARD_SEQ, Collective, Strategy, tokens_divide


def _split_block_bytes(block: Block, tokens: int, elem: float) -> float:
    """The gather in and scatter out belong to the split projections (attention, MLP, MoE);
    a norm under tp_sp runs on its token shard and communicates nothing (0 bytes: unpriced)."""
    return 0.0 if block.kind == "norm" else hidden_bytes(block, tokens, elem)


def sp_requirements(block: Block, ctx: PlanContext) -> str | None:
    reason = tokens_divide()(block, ctx)
    if reason:
        return reason
    return tp_requirements(block, ctx) if block.kind != "norm" else None


TP_SP = Strategy(
    name="tp_sp",
    kinds=frozenset({"attention", "mlp", "moe", "norm"}),
    axes=MODEL_AXES,
    summary="tp with the residual stream split along tokens: all-gather in, reduce-scatter out",
    layout_in=SHARD_SEQ,
    layout_out=SHARD_SEQ,
    splits_weights=True,
    splits_norm_tokens=True,
    collectives=(
        Collective("all_gather", MODEL_AXES, "block input", _split_block_bytes),
        Collective("reduce_scatter", MODEL_AXES, "block output", _split_block_bytes),
    ),
    requirements=(sp_requirements,),
)
