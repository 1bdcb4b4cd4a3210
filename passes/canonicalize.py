"""Canonicalize: drop identity ops and dead code so later passes see only real work."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from ir.graph import Graph, Op, ValueRef

IDENTITY_TARGETS = frozenset({"alias", "detach", "lift_fresh_copy", "dropout", "clone"})


@dataclass(frozen=True)
class Canonicalize:
    """Post: no identity ops (`alias`, `detach`, `clone`, eval-mode `dropout`); every op
    contributes to a graph output."""

    name: ClassVar[str] = "canonicalize"

    def run(self, graph: Graph) -> Graph:
        rename: dict[str, str] = {}
        ops: list[Op] = []
        for op in graph.ops:
            inputs = tuple(rename.get(v, v) for v in op.inputs)
            if op.target in IDENTITY_TARGETS and len(op.outputs) == 1 and inputs:
                src = inputs[0]
                if graph.values.get(src) == graph.values.get(op.outputs[0]):
                    rename[op.outputs[0]] = src
                    continue
            args = _rename_args(op.attrs.get("args", ()), rename)
            kwargs = _rename_args(op.attrs.get("kwargs", {}), rename)
            ops.append(replace(op, inputs=inputs, attrs={**op.attrs, "args": args, "kwargs": kwargs}))
        outputs = [rename.get(v, v) for v in graph.outputs]
        ops = _dead_code_elimination(ops, outputs)
        used = {v for o in ops for v in (*o.inputs, *o.outputs)} | set(graph.inputs) | set(outputs)
        values = {k: v for k, v in graph.values.items() if k in used or k in graph.params}
        return replace(graph, ops=ops, outputs=outputs, values=values)


def _rename_args(a, rename: dict[str, str]):
    if isinstance(a, ValueRef):
        return ValueRef(rename.get(a.name, a.name))
    if isinstance(a, (list, tuple)):
        return type(a)(_rename_args(x, rename) for x in a)
    if isinstance(a, dict):
        return {k: _rename_args(v, rename) for k, v in a.items()}
    return a


def _dead_code_elimination(ops: list[Op], outputs: list[str]) -> list[Op]:
    live = set(outputs)
    kept: list[Op] = []
    for op in reversed(ops):
        if any(v in live for v in op.outputs):
            kept.append(op)
            live.update(op.inputs)
    return list(reversed(kept))
