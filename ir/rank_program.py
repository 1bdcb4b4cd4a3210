"""The per-rank program IR: what every rank runs, with local shapes and explicit collectives.

`lower` (passes/lower/lower.py) builds a `RankProgram` from an analyzed `ir.Graph` and an
`ir.plan.Plan`; `schedule_overlap` reorders each block's steps; codegen renders it. The
program is rank-generic: one text serves every rank, which finds its coordinates at run time.

Data model
----------
* `LocalValue` — one tensor as a rank holds it: the graph value it carries (`source`), the
  global `TensorSpec`, its `Layout` and its local shape (polynomials in the global B, T, L). The
  same graph value may exist in several layouts; each is its own local value.
* Steps, in program order inside a block:
  `Compute` (one aten op or runtime helper on local values), `LocalShard` (Replicate ->
  Shard: a free slice), `Collective` (issue an async collective; `handle` names its work
  object) and `Wait` (the collective's result becomes usable).
* `BlockProgram` — one block's steps, the local values it reads from outside (`inputs`), the
  weights it reads (`params`) and what it hands on (`outputs`). `EdgeProgram` — the
  conversions between blocks (a residual stream changing layout at a block boundary).
* `RankProgram` — blocks and edges in order, graph inputs/outputs with their layouts, the
  weight shards to load, the KV caches, and how B, T, L are read from the inputs.

Only `ir/` is imported, so the module can move to `ir/` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ir.graph import ValueRef
from ir.layout import Layout
from ir.polynomial import Polynomial
from ir.tensor import TensorSpec


@dataclass(frozen=True)
class LocalValue:
    name: str
    source: str
    spec: TensorSpec
    layout: Layout
    local_shape: tuple[Polynomial, ...]
    hint: str = ""


@dataclass(frozen=True)
class AxisRank:
    """A step argument: this rank's coordinate along a mesh axis (known at run time)."""

    axis: str


@dataclass(frozen=True)
class MeshGroupsRef:
    """A step argument: this rank's process groups (`pg`), for runtime kernels that
    communicate inside (ring attention's send/recv)."""


@dataclass(frozen=True)
class Compute:
    """`outputs = target(*args, **kwargs)` on local tensors (`ValueRef` names local values).
    `target` is an aten op name as in `ir.graph.Op` or a runtime helper (`vocab_embedding`)."""

    target: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: tuple[str, ...]
    source_op: str = ""

    def reads(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_refs((self.args, self.kwargs))))


@dataclass(frozen=True)
class LocalShard:
    """Replicate -> Shard(dim) along `axis`: keep this rank's piece, no communication."""

    axis: str
    dim: int
    input: str
    output: str

    def reads(self) -> tuple[str, ...]:
        return (self.input,)


COLLECTIVE_KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")


@dataclass(frozen=True)
class Collective:
    """Issue an async collective over `axis`. all_reduce: Partial -> Replicate; all_gather:
    Shard(src_dim) -> Replicate; reduce_scatter: Partial -> Shard(dst_dim); all_to_all:
    Shard(src_dim) -> Shard(dst_dim). The result is `output`, usable after `Wait(handle)`."""

    kind: str
    axis: str
    input: str
    output: str
    handle: str
    src_dim: int = -1
    dst_dim: int = -1

    def reads(self) -> tuple[str, ...]:
        return (self.input,)


@dataclass(frozen=True)
class Wait:
    handle: str
    output: str

    def reads(self) -> tuple[str, ...]:
        return ()


Step = Compute | LocalShard | Collective | Wait


def step_writes(step: Step) -> tuple[str, ...]:
    if isinstance(step, Compute):
        return step.outputs
    if isinstance(step, LocalShard):
        return (step.output,)
    if isinstance(step, Wait):
        return (step.output,)
    return ()


@dataclass(frozen=True)
class ParamUse:
    """A weight a block reads: `key` identifies the local shard (parameter + layout),
    `local_name` is its name inside the block (fqn relative to the block's module)."""

    key: str
    local_name: str
    local: str = ""


@dataclass(frozen=True)
class BlockProgram:
    name: str
    kind: str
    group: str
    strategy: str
    layout_in: str
    layout_out: str
    inputs: tuple[str, ...]
    params: tuple[ParamUse, ...]
    outputs: tuple[str, ...]
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class EdgeProgram:
    """Layout changes between two blocks, run by the driver before `before_block`."""

    before_block: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class WeightShard:
    """One rank's piece of a weight. `view`, when set, is a reshape of the stored `shape`
    that `layout` splits (e.g. stacked experts' gate_up [E, 2F, H] as [E, 2, F, H], so an
    FFN split keeps matching gate and up rows); the piece is then reshaped to
    `local_shape`, whose rank is the stored one."""

    key: str
    param: str
    fqn: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    layout: Layout
    local_shape: tuple[int, ...]
    view: tuple[int, ...] = ()
    persistent: bool = True  # False: not in the state dict or a checkpoint
    buffer: bool = False  # a buffer, not a parameter: read by the forward, never trained


@dataclass(frozen=True)
class ProgramInput:
    """A graph input: the value every rank receives, sliced from the global tensor."""

    name: str
    local: str
    role: str  # "tokens" | "cache" | "other"


@dataclass(frozen=True)
class ProgramOutput:
    name: str
    local: str
    role: str  # "logits" | "cache"


@dataclass(frozen=True)
class CacheSpec:
    """A KV cache: graph input `input` is appended with graph output `output` along
    `length_dim` (the dim whose global size is L). `kvp_block` > 0: a Helix cache, split
    along L over kvp round-robin in blocks of `kvp_block` tokens (global slot g lives on kvp
    rank (g // kvp_block) % kvp at local slot (g // (kvp_block·kvp))·kvp_block + g % kvp_block);
    the new K/V is on every kvp rank and only the owner of a slot writes it."""

    input: str
    output: str
    length_dim: int
    kvp_block: int = 0


@dataclass(frozen=True)
class SymbolSource:
    """How to read a workload symbol at run time: `inputs[input].shape[dim] * factor`."""

    symbol: str
    input: str
    dim: int
    factor: int


@dataclass(frozen=True)
class RankProgram:
    mesh: dict[str, int]
    axes: tuple[str, ...]
    values: dict[str, LocalValue]
    inputs: tuple[ProgramInput, ...]
    outputs: tuple[ProgramOutput, ...]
    items: tuple[BlockProgram | EdgeProgram, ...]
    weights: tuple[WeightShard, ...]
    caches: tuple[CacheSpec, ...]
    symbols: tuple[SymbolSource, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    # Block name -> the earlier block whose lowering it is a renamed copy of (same ops, plan
    # entry and input layouts; passes/lower/reuse.py). Later passes and codegen may reuse
    # their work on that block; it is no part of the program's meaning (not compared).
    renamed_from: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def blocks(self) -> tuple[BlockProgram, ...]:
        return tuple(i for i in self.items if isinstance(i, BlockProgram))

    def steps(self) -> list[Step]:
        return [s for item in self.items for s in item.steps]

    def collectives(self) -> list[Collective]:
        return [s for s in self.steps() if isinstance(s, Collective)]


def _refs(x: Any) -> list[str]:
    if isinstance(x, ValueRef):
        return [x.name]
    if isinstance(x, (list, tuple)):
        return [n for v in x for n in _refs(v)]
    if isinstance(x, dict):
        return [n for v in x.values() for n in _refs(v)]
    return []
