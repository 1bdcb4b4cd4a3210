"""IR invariants, checked by the pass runner after every pass."""

from __future__ import annotations

from ir.errors import IRVerificationError
from ir.graph import BLOCK_KINDS, Graph


def verify_graph(graph: Graph) -> None:
    """Raise `IRVerificationError` naming the first broken invariant.

    Invariants: op names are unique; every op input is a graph input, a parameter or an
    earlier op's output (program order is a topological order); every value has a spec;
    graph outputs exist; blocks (when present) have known kinds, unique names, reference
    existing ops, and cover each op at most once.
    """
    defined: set[str] = set(graph.inputs) | set(graph.params)
    seen_ops: set[str] = set()
    for op in graph.ops:
        if op.name in seen_ops:
            raise IRVerificationError(f"op name {op.name!r} appears twice")
        seen_ops.add(op.name)
        for v in op.inputs:
            if v not in defined:
                raise IRVerificationError(f"op {op.name!r} reads {v!r} before it is defined")
        for v in op.outputs:
            if v not in graph.values:
                raise IRVerificationError(f"op {op.name!r} output {v!r} has no TensorSpec")
            defined.add(v)
    for v in graph.outputs:
        if v not in defined:
            raise IRVerificationError(f"graph output {v!r} is never defined")
    owner: dict[str, str] = {}
    names: set[str] = set()
    for b in graph.blocks:
        if b.kind not in BLOCK_KINDS:
            raise IRVerificationError(f"block {b.name!r} has unknown kind {b.kind!r}")
        if b.name in names:
            raise IRVerificationError(f"block name {b.name!r} appears twice")
        names.add(b.name)
        for o in b.ops:
            if o not in seen_ops:
                raise IRVerificationError(f"block {b.name!r} references missing op {o!r}")
            if o in owner:
                raise IRVerificationError(
                    f"op {o!r} belongs to both {owner[o]!r} and {b.name!r}"
                )
            owner[o] = b.name
