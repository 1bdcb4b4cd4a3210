"""The strategy type: a parallel strategy is a declared object read by generic code.

A `Strategy` says which block kinds it applies to, which mesh axis it uses, how it splits a
block's work (batch, tokens, weights, KV heads, vocabulary over that axis), the activation
layouts it consumes and produces, the collectives it issues, and what it requires of the
block's dims. `passes.parallelize.pricing` turns these declarations into time and memory;
`passes.parallelize.strategies` lists the strategies. Adding a parallelism means adding one
module there (and its lowering for codegen), not editing if-chains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ir.graph import Block
from passes.parallelize.context import PlanContext

# Activation layouts of the residual stream over the strategy axis (the dp axis always
# splits the batch and is not part of these names).
REPLICATE = "replicate"
SHARD_SEQ = "shard_seq"
SHARD_BATCH = "shard_batch"
LAYOUTS = (REPLICATE, SHARD_SEQ, SHARD_BATCH)


@dataclass(frozen=True)
class Collective:
    """One collective the block issues per forward pass over `axis`. `bytes_of` gives the
    per-rank buffer in the cost model's convention (all-reduce: the buffer; all-gather: the
    output; reduce-scatter: the input; all-to-all: the send buffer) from the block's token
    count on this replica and the activation dtype size."""

    kind: str
    axis: str
    what: str
    bytes_of: Callable[[Block, int, float], float]


Requirement = Callable[[Block, PlanContext], "str | None"]


@dataclass(frozen=True)
class Strategy:
    name: str
    kinds: frozenset[str]
    axis: str | None
    summary: str
    layout_in: str = REPLICATE
    layout_out: str = REPLICATE
    splits_weights: bool = False
    splits_batch: bool = False
    splits_norm_tokens: bool = False
    collectives: tuple[Collective, ...] = ()
    requirements: tuple[Requirement, ...] = field(default_factory=tuple)

    def degree(self, ctx: PlanContext) -> int:
        return ctx.mesh.size(self.axis) if self.axis else 1

    def why_not(self, block: Block, ctx: PlanContext) -> str | None:
        """None when the strategy applies to the block on this mesh; else the reason."""
        if block.kind not in self.kinds:
            return f"{self.name} does not apply to {block.kind} blocks"
        if self.axis and ctx.mesh.size(self.axis) == 1 and self.name != "replicate":
            return f"the mesh has no {self.axis} axis (size 1)"
        for req in self.requirements:
            reason = req(block, ctx)
            if reason:
                return reason
        return None


def divides(dim: str, axis: str) -> Requirement:
    """The block's `dim` must be a multiple of the axis size."""

    def check(block: Block, ctx: PlanContext) -> str | None:
        n = ctx.mesh.size(axis)
        value = block.dims.get(dim)
        if value is None:
            return f"the block has no {dim} dim to split"
        if value % n:
            return f"{dim}={value} is not divisible by {axis}={n}"
        return None

    return check


def batch_divides(axis: str) -> Requirement:
    def check(block: Block, ctx: PlanContext) -> str | None:
        n = ctx.mesh.size(axis)
        b = ctx.replica_batch()
        if b % n:
            return f"batch per replica {b} is not divisible by {axis}={n}"
        return None

    return check


def tokens_divide(axis: str) -> Requirement:
    def check(block: Block, ctx: PlanContext) -> str | None:
        n = ctx.mesh.size(axis)
        t = ctx.workload.seq
        if t % n:
            return (
                f"sequence parallel splits the {t} new tokens per step over {axis}={n}; "
                f"{t} is not divisible (decode has 1 new token)"
            )
        return None

    return check


def not_latent() -> Requirement:
    def check(block: Block, ctx: PlanContext) -> str | None:
        if "kv_lora_rank" in block.dims:
            return "latent (MLA) attention is not split by this strategy yet"
        return None

    return check
