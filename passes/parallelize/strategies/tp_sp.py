"""Tensor parallelism with sequence parallelism: the residual stream stays split along the
new tokens over tp; an all-gather feeds the column-parallel projections and a reduce-scatter
replaces TP's all-reduce. Norms between run on token shards. Prefill and training only."""

from __future__ import annotations

from ir.graph import Block
from passes.parallelize.context import PlanContext
from passes.parallelize.strategies.tp import hidden_bytes, tp_requirements
from passes.parallelize.strategy import MODEL_AXES, SHARD_SEQ, Collective, Strategy, tokens_divide


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
        Collective("all_gather", MODEL_AXES, "block input", hidden_bytes),
        Collective("reduce_scatter", MODEL_AXES, "block output", hidden_bytes),
    ),
    requirements=(sp_requirements,),
)
