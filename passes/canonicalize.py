"""Canonicalize: drop identity ops and dead code so later passes see only real work."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from ir.graph import Graph, Op, ValueRef
from ir.polynomial import as_polynomial

IDENTITY_TARGETS = frozenset({"alias", "detach", "lift_fresh_copy", "dropout", "clone"})


@dataclass(frozen=True)
class Canonicalize:
    """Post: no identity ops (`alias`, `detach`, `clone`, eval-mode `dropout`); no tensor
    filled in place slice by slice (see `_fills_as_cat`); every op contributes to a graph
    output."""

    name: ClassVar[str] = "canonicalize"

    def run(self, graph: Graph) -> Graph:
        rename: dict[str, str] = {}
        ops: list[Op] = []
        for op in _fills_as_cat(graph):
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


FRESH_TARGETS = frozenset({"new_empty", "empty_like", "empty.memory_format"})


def _fills_as_cat(graph: Graph) -> list[Op]:
    """Rewrite a fresh tensor filled by in-place copies into slices that tile one dim, in
    order (transformers' DeepSeek-V3 builds its keys so: `k = q.new_empty(...);
    k[..., :nope].copy_(k_nope); k[..., nope:].copy_(k_rot)`), as `cat` of the copied
    values. The copies' results are used by nothing, so dead-code elimination would
    otherwise drop them and leave the tensor unfilled; the cat is the same value, formed
    where the last copy was."""
    consumers: dict[str, list[Op]] = {}
    for op in graph.ops:
        for v in op.inputs:
            consumers.setdefault(v, []).append(op)
    replaced: dict[str, Op] = {}
    dropped: set[str] = set()
    for op in graph.ops:
        if op.target not in FRESH_TARGETS or len(op.outputs) != 1:
            continue
        fresh = op.outputs[0]
        fill = _slice_fill(graph, fresh, consumers)
        if fill is None:
            continue
        dim, pieces = fill
        last_copy = max(pieces, key=lambda sc: graph.ops.index(sc[1]))[1]
        sources = [copy.inputs[1] for _, copy in pieces]
        replaced[last_copy.name] = Op(
            name=op.name, target="cat", inputs=tuple(dict.fromkeys(sources)), outputs=(fresh,),
            module_path=op.module_path, module_types=op.module_types,
            attrs={"args": ([ValueRef(v) for v in sources], dim), "kwargs": {}},
        )
        dropped.add(op.name)
        dropped.update(o.name for pair in pieces for o in pair)
    return [replaced.get(op.name, op) for op in graph.ops if op.name not in dropped or op.name in replaced]


def _slice_fill(graph: Graph, fresh: str, consumers: dict[str, list[Op]]):
    """(dim, [(slice op, copy op)] in order) when `fresh` is written only by `copy_` into
    slices along one dim that tile it exactly, before any other op reads it; else None."""
    shape = tuple(as_polynomial(d) for d in graph.values[fresh].shape)
    pieces = []
    readers = []
    for use in consumers.get(fresh, []):
        if use.target != "slice.Tensor":
            readers.append(use)
            continue
        args = use.attrs.get("args", ())
        copies = consumers.get(use.outputs[0], [])
        if len(args) != 4 or len(copies) != 1 or copies[0].target != "copy_" or copies[0].inputs[0] != use.outputs[0]:
            return None
        if consumers.get(copies[0].outputs[0]) or len(copies[0].inputs) != 2:
            return None
        if graph.values.get(copies[0].inputs[1]) is None:
            return None
        if graph.values[copies[0].inputs[1]].shape != graph.values[use.outputs[0]].shape:
            return None
        dim = args[1] % len(shape)
        stop = min(args[3], int(shape[dim])) if shape[dim].is_number else args[3]
        pieces.append((dim, args[2], stop, use, copies[0]))
    if not pieces or len({p[0] for p in pieces}) != 1:
        return None
    pieces.sort(key=lambda p: p[1])
    dim = pieces[0][0]
    end = 0
    for _, start, stop, _, _ in pieces:
        if start != end:
            return None
        end = stop
    if not shape[dim].is_number or end != int(shape[dim]):
        return None
    order = {op.name: i for i, op in enumerate(graph.ops)}
    last = max(order[p[4].name] for p in pieces)
    if any(order[r.name] < last for r in readers):
        return None
    return dim, [(p[3], p[4]) for p in pieces]
