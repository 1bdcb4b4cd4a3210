"""Unroll layers: the full-depth IR from a trace of a few representative layers.

`planner.truncate` traces, of every run of identical consecutive layers, only the first two;
traced layer j is original layer `kept[j]`. This pass copies them back to full depth: original
layer i is a copy of the last traced layer at or before it (its representative) with op and
value names, module paths, parameter names, per-layer inputs and outputs (`past_kv_<i>_*`) and
block names renamed to layer i, and its dataflow rewired: what the representative read from
the layer before it, the copy reads from the copy before it. A copy of a run's second layer
reads from another copy of that layer, so the pass matches the run's two traced layers op by
op (targets, module paths, shapes, constants, wiring) and reads values through that match. It
raises `NotUnrollable` whenever the trace lacks that shape; the front end then traces every
layer.

Op names follow torch.fx: a base and a per-base counter (`linear_12`). A copy's counters are
those of its representative shifted by the stride its run's two traced layers show, and every
later op's by the skipped layers' strides, so ops are named as a full trace names them.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

from ir.errors import PlannerError
from ir.graph import Block, Graph, Op, ParamSpec, ValueRef

_COUNTER = re.compile(r"^(.*)_(\d+)$")
Item = TypeVar("Item")


class NotUnrollable(PlannerError):
    """The truncated trace does not have the shape unrolling needs (trace every layer)."""


def _split_name(name: str) -> tuple[str, int]:
    m = _COUNTER.match(name)
    return (m.group(1), int(m.group(2))) if m else (name, 0)


def _join_name(base: str, counter: int) -> str:
    return f"{base}_{counter}" if counter else base


def _map_refs(a: Any, fn: Callable[[str], Any]) -> Any:
    if isinstance(a, ValueRef):
        return fn(a.name)
    if isinstance(a, (list, tuple)):
        return type(a)(_map_refs(x, fn) for x in a)
    if isinstance(a, dict):
        return {k: _map_refs(v, fn) for k, v in a.items()}
    return a


@dataclass(frozen=True)
class UnrollLayers:
    """Pre: an analyzed graph traced with only the layers `kept` (ascending original indices,
    0 first) of the `num_layers` children of the module list at `container` (an IR module
    path); inputs named `<kw>_<j>...` for `kw` in `per_layer_inputs` belong to traced layer j.
    Post: the graph a trace of all `num_layers` layers gives: ops, values, inputs, outputs,
    parameters and blocks (names, layers, groups, dims, costs) of every layer."""

    name: ClassVar[str] = "unroll-layers"
    container: str
    num_layers: int
    kept: tuple[int, ...]
    per_layer_inputs: tuple[str, ...] = ()

    def run(self, graph: Graph) -> Graph:
        return _Unroller(self, graph).unroll()


PROLOGUE = -1


class _Unroller:
    def __init__(self, spec: UnrollLayers, graph: Graph):
        self.g = graph
        self.container = spec.container
        self.kept = spec.kept
        self.k = len(spec.kept)
        self.n = spec.num_layers
        self.per_layer_inputs = spec.per_layer_inputs
        if list(self.kept) != sorted(set(self.kept)) or not self.kept or self.kept[0] != 0:
            raise NotUnrollable(f"traced layers {list(self.kept)} must ascend from 0")
        if self.kept[-1] >= self.n:
            raise NotUnrollable(f"traced layer {self.kept[-1]} of only {self.n}")
        found = graph.meta.get("layer_container")
        if found != self.container:
            raise NotUnrollable(
                f"the recognizer took {found!r} as the layer list, not {self.container!r}"
            )
        self.epilogue = self.k
        self.rep = [bisect_right(self.kept, i) - 1 for i in range(self.n)]
        self._segment()

    # ---- reading the truncated graph -------------------------------------------------

    def _layer_of_path(self, path: str) -> int | None:
        prefix = self.container + "."
        if not path.startswith(prefix):
            return None
        index = path[len(prefix) :].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    def _segment(self) -> None:
        """Ops in program order: prologue, traced layers 0..k-1, epilogue, nothing between."""
        self.segments: dict[int, list[Op]] = {s: [] for s in range(PROLOGUE, self.k + 1)}
        self.seg_of_op: dict[str, int] = {}
        last = PROLOGUE
        for op in self.g.ops:
            pos = self._layer_of_path(op.module_path)
            if pos is None:
                seg = PROLOGUE if last == PROLOGUE else self.epilogue
            elif pos >= self.k or pos < last or self.segments[self.epilogue]:
                raise NotUnrollable(
                    f"op {op.name} of {op.module_path} runs out of layer order "
                    "(top-level code between layers, or layers called out of order)"
                )
            else:
                seg = last = pos
            self.segments[seg].append(op)
            self.seg_of_op[op.name] = seg
        empty = [self.kept[p] for p in range(self.k) if not self.segments[p]]
        if empty:
            raise NotUnrollable(f"traced layers {empty} have no ops")
        self.producer: dict[str, tuple[int, int, int]] = {}
        for seg, ops in self.segments.items():
            for j, op in enumerate(ops):
                for m, v in enumerate(op.outputs):
                    self.producer[v] = (seg, j, m)
        self.param_owner: dict[str, tuple[int, str]] = {}
        for v, p in self.g.params.items():
            pos = self._layer_of_path(p.name)
            if pos is None:
                continue
            if pos >= self.k or p.aliases or p.tied_to:
                raise NotUnrollable(f"parameter {p.name} is tied or outside the traced layers")
            rest = p.name[len(f"{self.container}.{pos}.") :]
            self.param_owner[v] = (pos, rest)
        self.input_owner: dict[str, tuple[int, str, str]] = {}
        for v in self.g.inputs:
            for kw in self.per_layer_inputs:
                m = re.match(rf"^{re.escape(kw)}_(\d+)(.*)$", v)
                if m:
                    self.input_owner[v] = (int(m.group(1)), kw, m.group(2))

    def _owner(self, v: str) -> int | None:
        """The traced layer a value belongs to (op output, per-layer input, parameter)."""
        if v in self.producer:
            seg = self.producer[v][0]
            return seg if 0 <= seg < self.k else None
        if v in self.input_owner:
            return self.input_owner[v][0]
        if v in self.param_owner:
            return self.param_owner[v][0]
        return None

    # ---- matching the two traced layers of a run ----------------------------------------

    def _role(self, v: str, pos: int) -> tuple:
        """What an op of traced layer `pos` reads, in terms that do not name the layer."""
        owner = self._owner(v)
        if owner is None:
            return ("global", v)
        if owner == pos:
            if v in self.producer:
                return ("local", *self.producer[v][1:])
            if v in self.input_owner:
                return ("input", *self.input_owner[v][1:])
            return ("param", self.param_owner[v][1])
        if owner == pos - 1 and v in self.producer:
            return ("previous layer", self.g.values[v])
        raise NotUnrollable(f"layer {self.kept[pos]} reads {v} of layer {self.kept[owner]}")

    def _same_role(self, first: str, first_pos: int, second: str, second_pos: int) -> bool:
        a, b = self._role(first, first_pos), self._role(second, second_pos)
        if a == b:
            return True
        # The run's first layer may read the model's prologue where the second reads it.
        return (
            a[0] == "global"
            and b[0] == "previous layer"
            and first not in self.g.params
            and self.g.values.get(first) == b[1]
        )

    def _match(self, pos: int) -> tuple[dict[str, str], dict[str, int]]:
        """Traced layer pos-1 against pos (two layers of one run): the value correspondence
        and, per op-name base, the counter stride of one layer."""
        first, second = self.segments[pos - 1], self.segments[pos]
        where = f"traced layers {self.kept[pos - 1]} and {self.kept[pos]}"
        if len(first) != len(second):
            raise NotUnrollable(f"{where} have {len(first)} and {len(second)} ops")
        corr: dict[str, str] = {}
        stride: dict[str, int] = {}
        irregular: set[str] = set()
        for x, y in zip(first, second, strict=True):
            same = (
                x.target == y.target
                and x.module_types == y.module_types
                and self._relative(x.module_path, pos - 1) == self._relative(y.module_path, pos)
                and len(x.outputs) == len(y.outputs)
                and len(x.inputs) == len(y.inputs)
                and all(self.g.values[u] == self.g.values[w] for u, w in zip(x.outputs, y.outputs, strict=True))
                and all(
                    self._same_role(u, pos - 1, w, pos)
                    for u, w in zip(x.inputs, y.inputs, strict=True)
                )
                and _ref_positions(x) == _ref_positions(y)
            )
            base_x, counter_x = _split_name(x.name)
            base_y, counter_y = _split_name(y.name)
            if not same or base_x != base_y:
                raise NotUnrollable(f"{where} differ at ops {x.name} and {y.name}")
            if stride.setdefault(base_x, counter_y - counter_x) != counter_y - counter_x:
                irregular.add(base_x)
            corr.update(zip(x.outputs, y.outputs, strict=True))
        for base in irregular:
            stride[base] = self._span(pos, base)
        self._match_blocks(pos)
        return corr, stride

    def _span(self, pos: int, base: str) -> int:
        """Counters of `base` one layer like `pos` takes, when the run's first layer made
        extra nodes of that base that the IR does not keep (shape arithmetic torch.export
        computes once): the gap between the last `base` op before the layer and the first
        after it. At least the layer's own range, so copies never collide."""
        names = [o.name for o in self.segments[pos]]
        first, last = self.g.ops.index(self.segments[pos][0]), self.g.ops.index(self.segments[pos][-1])
        own = [c for b, c in map(_split_name, names) if b == base]
        before = [c for b, c in (_split_name(o.name) for o in self.g.ops[:first]) if b == base]
        after = [c for b, c in (_split_name(o.name) for o in self.g.ops[last + 1 :]) if b == base]
        span = max(own) - min(own) + 1
        if before and after:
            span = max(span, min(after) - max(before) - 1)
        return span

    def _match_blocks(self, pos: int) -> None:
        first, second = self.blocks_of[pos - 1], self.blocks_of[pos]
        a_index = {o.name: j for j, o in enumerate(self.segments[pos - 1])}
        b_index = {o.name: j for j, o in enumerate(self.segments[pos])}
        ok = len(first) == len(second) and all(
            (a.kind, a.group, a.signature, a.name[len(f"layers.{pos - 1}") :])
            == (b.kind, b.group, b.signature, b.name[len(f"layers.{pos}") :])
            and [a_index[o] for o in a.ops] == [b_index[o] for o in b.ops]
            for a, b in zip(first, second, strict=True)
        )
        if not ok:
            raise NotUnrollable(
                f"traced layers {self.kept[pos - 1]} and {self.kept[pos]} cut into different blocks"
            )

    def _relative(self, path: str, pos: int) -> str:
        layer = f"{self.container}.{pos}"
        if path == layer or path.startswith(layer + "."):
            return "*" + path[len(layer) :]
        return path

    # ---- renaming -------------------------------------------------------------------------

    def _path_for(self, path: str, pos: int, layer: int) -> str:
        relative = self._relative(path, pos)
        return f"{self.container}.{layer}{relative[1:]}" if relative.startswith("*") else path

    def _param_for(self, v: str, layer: int) -> tuple[str, ParamSpec]:
        pos, rest = self.param_owner[v]
        spec = self.g.params[v]
        old_tail = spec.name.replace(".", "_")
        new_name = f"{self.container}.{layer}.{rest}"
        if not v.endswith(old_tail):
            raise NotUnrollable(f"parameter value {v} is not named after {spec.name}")
        value = v[: len(v) - len(old_tail)] + new_name.replace(".", "_")
        return value, replace(spec, name=new_name, value=value)

    def _input_for(self, v: str, layer: int) -> str:
        _, kw, rest = self.input_owner[v]
        return f"{kw}_{layer}{rest}"

    def _placeholder_for(self, v: str, layer: int | None) -> str:
        if layer is None:
            return v
        return self._param_for(v, layer)[0] if v in self.param_owner else self._input_for(v, layer)

    # ---- building the full graph ------------------------------------------------------------

    def unroll(self) -> Graph:
        self._assign_blocks()
        self.corr: dict[int, dict[str, str]] = {}
        self.stride: dict[int, dict[str, int]] = {}
        for pos in sorted({self.rep[i] for i in range(self.n) if self.kept[self.rep[i]] != i}):
            if pos == 0 or self.kept[pos - 1] != self.kept[pos] - 1:
                raise NotUnrollable(f"layer {self.kept[pos]} is copied without its run's first layer")
            self.corr[pos], self.stride[pos] = self._match(pos)

        values = self._placeholder_values()
        ops: list[Op] = list(self.segments[PROLOGUE])
        for op in ops:
            self._add_outputs(values, op, op)
        shift: dict[str, int] = {}
        blocks = self._unroll_layers(ops, values, shift)
        top_level_ops, top_level_values = self._unroll_epilogue(ops, values, shift)
        if len({o.name for o in ops}) != len(ops):
            raise NotUnrollable("unrolled op names collide")
        outside = [
            replace(b, ops=tuple(top_level_ops.get(o, o) for o in b.ops))
            for b in self.blocks_of[PROLOGUE] + self.blocks_of[self.epilogue]
        ]
        before = len(self.blocks_of[PROLOGUE])

        def output_for(v: str, layer: int | None) -> str:
            if layer is None:
                return top_level_values.get(v, v)
            if v in self.producer:
                return self.layer_values[layer][v]
            return self._placeholder_for(v, layer)

        outputs = self._expand(self.g.outputs, self._owner, output_for)
        missing = [v for v in outputs if v not in values]
        if missing:
            raise NotUnrollable(f"graph outputs {missing[:3]} have no value")
        params = self._expand(
            list(self.g.params.items()),
            lambda item: self._owner(item[0]),
            lambda item, layer: item if layer is None else self._param_for(item[0], layer),
        )
        return Graph(
            ops=ops,
            values=values,
            inputs=self._expand(self.g.inputs, self._owner, self._placeholder_for),
            outputs=outputs,
            params=dict(params),
            blocks=outside[:before] + blocks + outside[before:],
            meta={**self.g.meta, "traced_layers": list(self.kept)},
        )

    def _unroll_layers(self, ops: list[Op], values: dict, shift: dict[str, int]) -> list[Block]:
        """Append every layer's ops (and their values); return the layers' blocks."""
        blocks: list[Block] = []
        self.layer_values: dict[int, dict[str, str]] = {}
        for layer in range(self.n):
            pos = self.rep[layer]
            if self.kept[pos] != layer:
                for base, step in self.stride[pos].items():
                    shift[base] = shift.get(base, 0) + step
            local: dict[str, str] = {}
            op_names: dict[str, str] = {}
            self.layer_values[layer] = local
            for op in self.segments[pos]:
                new = self._copy_op(
                    op,
                    lambda v, layer=layer: self._read_in_layer(v, layer),
                    shift,
                    local,
                    lambda path, layer=layer: self._path_for(path, self.rep[layer], layer),
                )
                op_names[op.name] = new.name
                ops.append(new)
                self._add_outputs(values, op, new)
            blocks.extend(self._copy_block(b, pos, layer, op_names) for b in self.blocks_of[pos])
        return blocks

    def _read_in_layer(self, v: str, layer: int) -> str:
        """The name, in the unrolled graph, of what layer `layer` reads as `v` (a name in its
        representative's trace)."""
        pos = self.rep[layer]
        local = self.layer_values[layer]
        if v in local:
            return local[v]
        seg = self.producer[v][0] if v in self.producer else None
        if seg is not None and seg >= 0 and seg == pos - 1:
            previous = self.layer_values[layer - 1]
            if self.rep[layer - 1] == pos:  # a copy reads the copy (or traced layer) before it
                return previous[self.corr[pos][v]]
            return previous[v]
        owner = self._owner(v)
        if owner is None:
            return v
        if owner == pos and seg is None:
            return self._placeholder_for(v, layer)
        raise NotUnrollable(f"layer {layer} would read {v} of traced layer {self.kept[owner]}")

    def _unroll_epilogue(
        self, ops: list[Op], values: dict, shift: dict[str, int]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Append the code after the layers, reading the last layer; returns the renamed
        ops and values."""
        last = self.layer_values[self.n - 1]
        renamed: dict[str, str] = {}
        op_names: dict[str, str] = {}

        def read(v: str) -> str:
            if v in renamed:
                return renamed[v]
            if v in last:
                return last[v]
            if self._owner(v) is None:
                return v
            raise NotUnrollable(f"code after the layers reads {v} of an earlier layer")

        for op in self.segments[self.epilogue]:
            new = self._copy_op(op, read, shift, renamed, lambda path: path)
            op_names[op.name] = new.name
            ops.append(new)
            self._add_outputs(values, op, new)
        return op_names, renamed

    def _copy_op(
        self,
        op: Op,
        read: Callable[[str], str],
        shift: dict[str, int],
        local: dict[str, str],
        path_for: Callable[[str], str],
    ) -> Op:
        base, counter = _split_name(op.name)
        name = _join_name(base, counter + shift.get(base, 0))
        inputs = {v: read(v) for v in op.inputs}

        def ref(v: str) -> ValueRef:
            if v not in inputs:
                raise NotUnrollable(f"op {op.name} refers to {v}, which is not among its inputs")
            return ValueRef(inputs[v])

        outputs = []
        for v in op.outputs:
            if v == op.name:
                outputs.append(name)
            elif v.startswith(op.name + "_") and v[len(op.name) + 1 :].isdigit():
                outputs.append(f"{name}{v[len(op.name) :]}")
            else:
                raise NotUnrollable(f"op {op.name} has an output named {v}")
            local[v] = outputs[-1]
        attrs = dict(op.attrs)
        for key in ("args", "kwargs"):
            if key in attrs:
                attrs[key] = _map_refs(attrs[key], ref)
        return replace(
            op,
            name=name,
            inputs=tuple(inputs[v] for v in op.inputs),
            outputs=tuple(outputs),
            module_path=path_for(op.module_path),
            attrs=attrs,
        )

    def _copy_block(self, block: Block, pos: int, layer: int, op_names: dict[str, str]) -> Block:
        params = []
        for v in block.params:
            if v in self.param_owner:
                params.append(self._param_for(v, layer)[0])
            elif layer == self.kept[pos]:
                params.append(v)
            else:
                raise NotUnrollable(f"block {block.name} claims the shared parameter {v}")
        return replace(
            block,
            name=f"layers.{layer}" + block.name[len(f"layers.{pos}") :],
            layer=layer,
            ops=tuple(op_names[o] for o in block.ops),
            params=tuple(params),
            module_path=self._path_for(block.module_path, pos, layer),
        )

    def _assign_blocks(self) -> None:
        """Every block lies in one traced layer or outside all of them (a top-level block may
        own ops before and after the layers), and blocks come in layer order."""
        self.blocks_of: dict[int, list[Block]] = {s: [] for s in self.segments}
        last = PROLOGUE
        for b in self.g.blocks:
            segs = {self.seg_of_op[o] for o in b.ops}
            layers = {s for s in segs if 0 <= s < self.k}
            seg = min(segs, default=PROLOGUE)
            if not segs or (layers and len(segs) > 1):
                raise NotUnrollable(f"block {b.name} spans {len(segs)} layers or none")
            if seg < last or (b.layer == seg) != bool(layers):
                raise NotUnrollable(f"block {b.name} is out of layer order")
            if layers and not b.name.startswith(f"layers.{seg}."):
                raise NotUnrollable(f"block {b.name} of layer {seg} is not named layers.{seg}.*")
            last = seg
            self.blocks_of[seg].append(b)

    def _placeholder_values(self) -> dict:
        """Specs of values no op produces (parameters, inputs), in their traced order."""
        names = [(v, v) for v in self.g.values if v not in self.producer]
        expanded = self._expand(
            names,
            lambda item: self._owner(item[0]),
            lambda item, layer: item if layer is None else (item[0], self._placeholder_for(item[0], layer)),
        )
        return {new: self.g.values[old] for old, new in expanded}

    def _add_outputs(self, values: dict, traced: Op, copy: Op) -> None:
        for old, new in zip(traced.outputs, copy.outputs, strict=True):
            if new in values:
                raise NotUnrollable(f"unrolled value name {new} collides")
            if old in self.g.values:
                values[new] = self.g.values[old]

    def _expand(
        self,
        items: Iterable[Item],
        owner: Callable[[Item], int | None],
        rename: Callable[[Item, int | None], Item],
    ) -> list[Item]:
        """Expand each stretch of per-layer items (consecutive, layer order) to every layer:
        `[x, k_0, v_0, k_1, v_1, y]` becomes `[x, k_0, v_0, ..., k_{n-1}, v_{n-1}, y]`.
        `rename(item, layer)` names an item for a layer; `rename(item, None)` a shared one."""
        out: list[Item] = []
        stretch: list[tuple[int, Item]] = []

        def flush() -> None:
            for layer in range(self.n):
                out.extend(rename(x, layer) for pos, x in stretch if pos == self.rep[layer])
            stretch.clear()

        for x in items:
            pos = owner(x)
            if pos is None:
                flush()
                out.append(rename(x, None))
                continue
            if stretch and pos < stretch[-1][0]:
                flush()
            stretch.append((pos, x))
        flush()
        return out


def _ref_positions(op: Op) -> Any:
    """The op's constants with each value reference replaced by its input position."""
    index = {v: i for i, v in enumerate(op.inputs)}
    return _map_refs(
        {k: op.attrs.get(k) for k in ("args", "kwargs")},
        lambda v: ("input", index[v]) if v in index else ("other", v),
    )
