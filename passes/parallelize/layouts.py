"""Resharding the residual stream between two blocks' layouts (over the model group).

Moving to a finer layout is a local slice (free); gathering a split stream back is an
all-gather; switching the split dim (tokens ↔ batch) is an all-to-all of the local part.
Training pays the transposed collective in backward as well.
"""

from __future__ import annotations

from passes.parallelize.context import PlanContext
from passes.parallelize.strategy import MODEL_AXES, REPLICATE, SHARD_BATCH, SHARD_SEQ


def reshard_kind(src: str, dst: str) -> str | None:
    """The collective that turns layout `src` into `dst` (None: free)."""
    if src == dst or src == REPLICATE:
        return None
    if dst == REPLICATE:
        return "all_gather"
    if {src, dst} == {SHARD_SEQ, SHARD_BATCH}:
        return "all_to_all"
    raise ValueError(f"no resharding rule from {src} to {dst}")


def reshard_seconds(src: str, dst: str, full_bytes: float, ctx: PlanContext) -> float:
    """Time to move an activation of `full_bytes` (per replica) from `src` to `dst`."""
    kind = reshard_kind(src, dst)
    if kind is None:
        return 0.0
    n = ctx.group_size(MODEL_AXES)
    nbytes = full_bytes if kind == "all_gather" else full_bytes / n
    seconds = ctx.collective_s(kind, nbytes, MODEL_AXES)
    return 2 * seconds if ctx.is_train else seconds
