"""The dataflow graph: ops over named values, with parameters and blocks.

A `Graph` is plain data (lists and dicts of frozen records) so it prints, compares and
serializes simply; `Graph.nx()` builds a networkx view for analyses such as topological order
and regions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import networkx

from ir.polynomial import ZERO, Polynomial
from ir.tensor import TensorSpec


@dataclass(frozen=True)
class ValueRef:
    """A reference to a graph value inside an op's `args`/`kwargs` attributes."""

    name: str

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclass(frozen=True)
class Op:
    """One operation. `target` is the aten overload without namespace noise, e.g. `linear`,
    `scaled_dot_product_attention`, `mul.Tensor`. `inputs` and `outputs` name values in
    `Graph.values`; constant arguments live in `attrs`. `module_path` is the owning module
    (`model.layers.3.self_attn.q_proj`), empty for top-level code."""

    name: str
    target: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    module_path: str = ""
    module_types: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ParamSpec:
    """A parameter or buffer: its fully qualified name, the value that carries it in the
    graph, its shape (always concrete) and dtype. Tied parameters share one `ParamSpec` whose
    `aliases` lists the other names; when export gives a tied weight two placeholders,
    the later one names the first in `tied_to`."""

    name: str
    value: str
    shape: tuple[int, ...]
    dtype: str
    is_buffer: bool = False
    aliases: tuple[str, ...] = ()
    tied_to: str = ""
    persistent: bool = True  # False: a buffer outside the state dict (rotary inv_freq)

    @property
    def counts(self) -> bool:
        """Counted in parameter totals: a parameter, and not a second handle on a tied one."""
        return not self.is_buffer and not self.tied_to

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Block:
    """A recognized unit the planner decides a strategy for.

    `kind` is one of embedding, attention, mlp, moe, norm, lm_head, other. `dims` are its
    semantic sizes (hidden, q_heads, kv_heads, head_dim, ffn, experts, top_k, vocab, ...).
    `traits` are structural facts that are not sizes (`gated`: the MLP multiplies two
    projections; `latent_one_head`: latent attention that caches its latent as one KV head
    and expands per-head K/V from it every step, as transformers' DeepSeek-V3 does; `sdpa`:
    attention runs as one attention kernel, 0 for eager matmuls). `group` names its repeated-layer group (identical structure and dims share a group).
    `flops` and `bytes_moved` are polynomials in B, T, L for one forward pass."""

    name: str
    kind: str
    layer: int | None
    ops: tuple[str, ...]
    params: tuple[str, ...]
    dims: dict[str, int] = field(default_factory=dict, compare=False, hash=False)
    traits: dict[str, int] = field(default_factory=dict, compare=False, hash=False)
    group: str = ""
    signature: str = ""
    param_count: int = 0
    # elements of weights another block owns that this block reads, charged in its own
    # layout (a tied LM head: the embedding's table); readers of one group share one copy
    # (passes/shared_params.py)
    shared_param_count: float = 0.0
    flops: Polynomial = ZERO
    bytes_moved: Polynomial = ZERO
    module_path: str = ""


BLOCK_KINDS = ("embedding", "attention", "mlp", "moe", "norm", "lm_head", "other")


@dataclass
class Graph:
    """A captured model as data.

    `values` maps value names to their `TensorSpec`; `inputs` are the user inputs (not
    parameters) in forward order, `outputs` the returned values. `params` maps value names of
    parameter placeholders to their `ParamSpec`. `blocks` is filled by the recognizer pass.
    `meta` carries capture facts (model source, whether a KV cache was traced, ...)."""

    ops: list[Op]
    values: dict[str, TensorSpec]
    inputs: list[str]
    outputs: list[str]
    params: dict[str, ParamSpec]
    blocks: list[Block] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def op(self, name: str) -> Op:
        return self._op_index()[name]

    def _op_index(self) -> dict[str, Op]:
        return {o.name: o for o in self.ops}

    def producers(self) -> dict[str, Op]:
        """Value name -> the op that produces it."""
        return {v: o for o in self.ops for v in o.outputs}

    def consumers(self) -> dict[str, list[Op]]:
        """Value name -> ops that read it, in program order."""
        out: dict[str, list[Op]] = {}
        for o in self.ops:
            for v in o.inputs:
                out.setdefault(v, []).append(o)
        return out

    def nx(self) -> networkx.DiGraph:
        """Op-level dataflow graph (nodes are op names; edges carry the value name)."""
        import networkx as nx  # only analyses need it; loading a cached graph does not

        g = nx.DiGraph()
        prod = self.producers()
        for o in self.ops:
            g.add_node(o.name)
            for v in o.inputs:
                if v in prod:
                    g.add_edge(prod[v].name, o.name, value=v)
        return g

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)

    def iter_ops(self, names: tuple[str, ...]) -> Iterator[Op]:
        idx = self._op_index()
        for n in names:
            yield idx[n]

    @property
    def param_count(self) -> int:
        """Parameters (not buffers), tied weights counted once — as `model.parameters()`."""
        return sum(p.numel for p in self.params.values() if p.counts)

