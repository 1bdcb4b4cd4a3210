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
from ir.mesh import MODEL_AXES
from passes.parallelize.context import PlanContext
from passes.parallelize.training import training_options

# Activation layouts of the residual stream over the strategy axis (the dp axis always
# splits the batch and is not part of these names).
REPLICATE = "replicate"
SHARD_SEQ = "shard_seq"
SHARD_BATCH = "shard_batch"
LAYOUTS = (REPLICATE, SHARD_SEQ, SHARD_BATCH)




@dataclass(frozen=True)
class Collective:
    """One collective the block issues per forward pass over `axes`. `bytes_of` gives the
    per-rank buffer in the cost model's convention (all-reduce: the buffer; all-gather: the
    output; reduce-scatter: the input; all-to-all: the send buffer) from the block's token
    count on this replica and the activation dtype size.

    In training, `backward` is the collective the backward pass issues for it: "transpose"
    (all-reduce ↔ all-reduce, all-gather ↔ reduce-scatter, all-to-all ↔ all-to-all, same
    bytes), another kind (of `backward_bytes_of` bytes), or None when the backward needs
    none. `phases` says in which workloads the collective runs at all."""

    kind: str
    axes: tuple[str, ...]
    what: str
    bytes_of: Callable[[Block, int, float], float]
    backward: str | None = "transpose"
    backward_bytes_of: Callable[[Block, int, float], float] | None = None
    phases: frozenset[str] = frozenset({"decode", "prefill", "train"})


Requirement = Callable[[Block, PlanContext], "str | None"]


@dataclass(frozen=True)
class Strategy:
    """`axes`: the mesh axes the strategy spreads a block over (one group of their product);
    empty for replicate. `price` replaces the generic pricing for strategies whose work does
    not follow from the split flags (Helix). `default` strategies are offered unless the user
    narrows the set; the others only on request (not yet verified end to end). `explain`
    gives lines for `helixplan explain` on why this strategy (and its variant, the plan's
    extras) at this workload."""

    name: str
    kinds: frozenset[str]
    axes: tuple[str, ...]
    summary: str
    layout_in: str = REPLICATE
    layout_out: str = REPLICATE
    splits_weights: bool = False
    splits_batch: bool = False
    splits_norm_tokens: bool = False
    collectives: tuple[Collective, ...] = ()
    requirements: tuple[Requirement, ...] = field(default_factory=tuple)
    price: Callable | None = None
    variants: Callable[[Block, PlanContext], list[dict[str, int]]] | None = None
    explain: Callable[[Block, PlanContext, dict[str, int]], list[str]] | None = None
    default: bool = True
    workloads: frozenset[str] = frozenset({"decode", "prefill", "train"})
    workload_hint: str = ""

    def workload_reason(self, kind: str, *, hint: bool = False) -> str | None:
        """None when the strategy applies to `kind` workloads; else why not, with `hint` the
        strategy's `workload_hint` too (what to use instead: for a user who forced it, not
        for every plan's list of rejected options)."""
        if kind in self.workloads:
            return None
        reason = f"{self.name} applies to {', '.join(sorted(self.workloads))} workloads"
        return f"{reason}: {self.workload_hint}" if hint and self.workload_hint else reason

    def options(self, block: Block, ctx: PlanContext) -> list[dict[str, int]]:
        """The strategy's extra-parameter choices the ILP picks among ({} when none); a
        training plan adds each block's dp sharding level and recomputation choice."""
        own = self.variants(block, ctx) if self.variants else [{}]
        if not ctx.is_train:
            return own
        return [{**o, **t} for o in own for t in training_options(block, ctx)]

    def option_name(self, extras: dict[str, int]) -> str:
        if not extras:
            return self.name
        return self.name + "[" + ",".join(f"{k}={v}" for k, v in extras.items()) + "]"

    def degree(self, ctx: PlanContext) -> int:
        return ctx.group_size(self.axes) if self.axes else 1

    def degrees(self, ctx: PlanContext) -> dict[str, int]:
        """Axis sizes the strategy uses, for plan.json (size-1 axes omitted)."""
        return {a: ctx.mesh.size(a) for a in self.axes if ctx.mesh.size(a) > 1}

    def why_not(self, block: Block, ctx: PlanContext) -> str | None:
        """None when the strategy applies to the block on this mesh; else the reason."""
        if block.kind not in self.kinds:
            return f"{self.name} does not apply to {block.kind} blocks"
        off_workload = self.workload_reason(ctx.workload.kind)
        if off_workload:
            return off_workload
        if self.axes and self.degree(ctx) == 1:
            return f"the mesh has no {'×'.join(self.axes)} parallelism (size 1)"
        if ctx.mesh.size("cp") > 1 and "cp" not in self.axes:
            if block.kind == "attention":
                return "on a cp mesh attention runs as ring attention (cp_pass_kv or cp_pass_q)"
            if self.splits_batch or self.splits_norm_tokens:
                return f"{self.name} is not lowered together with a cp axis"
        for req in self.requirements:
            reason = req(block, ctx)
            if reason:
                return reason
        return None


def _label(axes: tuple[str, ...], ctx: PlanContext) -> str:
    used = [a for a in axes if ctx.mesh.size(a) > 1] or list(axes[-1:])
    return "×".join(used) + f"={ctx.group_size(axes)}"


def divides(dim: str, axes: tuple[str, ...] = MODEL_AXES) -> Requirement:
    """The block's `dim` must be a multiple of the group size over `axes`."""

    def check(block: Block, ctx: PlanContext) -> str | None:
        n = ctx.group_size(axes)
        value = block.dims.get(dim)
        if value is None:
            return f"the block has no {dim} dim to split"
        if value % n:
            return f"{dim}={value} is not divisible by {_label(axes, ctx)}"
        return None

    return check


def batch_divides(axes: tuple[str, ...] = MODEL_AXES) -> Requirement:
    def check(block: Block, ctx: PlanContext) -> str | None:
        n = ctx.group_size(axes)
        b = ctx.replica_batch()
        if b % n:
            return f"batch per replica {b} is not divisible by {_label(axes, ctx)}"
        return None

    return check


def tokens_divide(axes: tuple[str, ...] = MODEL_AXES) -> Requirement:
    def check(block: Block, ctx: PlanContext) -> str | None:
        n = ctx.group_size(axes)
        t = ctx.workload.seq
        if t % n:
            return (
                f"sequence parallel splits the {t} new tokens per step over "
                f"{_label(axes, ctx)}; {t} is not divisible (decode has 1 new token)"
            )
        return None

    return check


def not_latent() -> Requirement:
    def check(block: Block, ctx: PlanContext) -> str | None:
        if "kv_lora_rank" in block.dims:
            return "latent (MLA) attention is not split by this strategy yet"
        return None

    return check
