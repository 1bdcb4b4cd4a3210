"""Lower a repeated layer once: later copies of a block are its lowering, renamed.

A deep model repeats one layer many times, and under one strategy every copy lowers to the
same steps with other names. `LayerReuse` records what lowering a block did — the steps,
the local values and weight shards it created, its inputs, params and outputs — and, for a
later block that matches it, writes the same record with the names changed instead of
running the op rules again.

When a block matches a record (`key`): same layer group, kind and plan entry (strategy,
degrees, extras, stream layouts), the same ops one for one (targets, constant arguments,
value shapes, parameter shapes), the same layouts of the values it reads from earlier
blocks, and the same fate of its results (read later, a graph output, a new KV for which
cache layout). Names are mapped one for one: graph values and ops by position, parameter
names through the ops reading them, local values by the order they were created in
(`{source}__{n}` becomes `{new source}__{n + offset}`, exactly what lowering would number
it), weight shards through their parameter.

Trust, by checking: a group's record serves copies only after the lowering of a second
block of the group by its rules came out exactly as the record renamed; otherwise that
block becomes the candidate and the next one checks it. A step type the renamer does not
know, or a name it cannot map, leaves the block to the rules. So the program is the one
lowering every block by its rules gives (tests/test_lower_reuse.py compares both).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ir.graph import Op, ValueRef
from ir.rank_program import (
    Collective,
    Compute,
    LocalShard,
    LocalValue,
    ParamUse,
    Step,
    Wait,
    WeightShard,
)
from passes.lower.builder import Builder, identifier

if TYPE_CHECKING:
    from passes.lower.lower import BlockLowering

# A group whose second block does not check out gets this many more tries.
MAX_CANDIDATES = 3
_NUMBERED = re.compile(r"(.*)__(\d+)")


class NotReusable(Exception):
    """The record cannot be renamed onto this block; lower it by the rules."""


@dataclass
class _Record:
    """What lowering one block (after its entry conversions) did to the program."""

    block: str
    ops: tuple[Op, ...]
    counter: tuple[int, int]  # the builder's value counter before and after
    external: dict[str, str]  # graph value read from earlier blocks -> its local
    inputs: tuple[str, ...]  # inputs the body added (after the entry's stream inputs)
    values: tuple[LocalValue, ...]  # local values created, in order
    weights: tuple[WeightShard, ...]  # weight shards created, in order
    params: tuple[ParamUse, ...]
    steps: tuple[Step, ...]
    outputs: tuple[str, ...]
    current: tuple[tuple[str, str], ...]  # graph value -> local the builder now holds
    # per value: (value, its number when lowering numbered it, how its hint is renamed);
    # worked out once, when the record first serves a copy (`_value_plan`)
    value_plan: tuple[tuple[LocalValue, int | None, _Hint], ...] | None = field(default=None, compare=False)
    # per step: (step, for a Compute the renamers of its args and kwargs)
    step_plan: tuple[tuple[Step, tuple | None], ...] = field(default=(), compare=False)


@dataclass
class Recording:
    """The builder's state when lowering a block's body started."""

    key: tuple | None
    counter: int
    values: int
    weights: int
    inputs: int


class LayerReuse:
    """Records lowered blocks and replays them, renamed, onto matching later blocks."""

    def __init__(self, builder: Builder):
        self.b = builder
        graph = builder.graph
        self.outputs = set(graph.outputs)
        self.logits = graph.outputs[0] if graph.outputs else None
        self.cache_of_output = {new: cache for cache, new in builder.cache_pairs}
        self.trusted: dict[tuple, _Record] = {}
        self.candidate: dict[tuple, _Record] = {}
        self.tries: dict[tuple, int] = {}
        self.renamed_from: dict[str, str] = {}
        self.skeletons: dict[str, tuple[tuple, Any, list[str]]] = {}

    # -- matching -----------------------------------------------------------------------
    def key(self, cx: BlockLowering) -> tuple | None:
        """What must be equal for two blocks to lower alike (the ops are compared when a
        record is renamed); None for a block outside a repeated-layer group."""
        block, bp, b = cx.block, cx.plan, self.b
        if block.layer is None or not block.group:
            return None
        produced = {o for op in cx.ops for o in op.outputs}
        seen: set[str] = set()
        reads = []
        for op in cx.ops:
            for v in op.inputs:
                if v in seen or v in produced or v in b.graph.params:
                    continue
                seen.add(v)
                local = cx.primary.get(v) or b.current.get(v)
                if local is None:
                    return None
                reads.append(b.values[local].layout)
        fates = []
        for v in (o for op in cx.ops for o in op.outputs):
            readers = b.consumer_blocks.get(v, ())
            later = len(readers) > 1 or (len(readers) == 1 and block.name not in readers)
            cache = self.cache_of_output.get(v)
            cache_layout = b.values[b.current[cache]].layout if cache in b.current else None
            fates.append((later, v in self.outputs, v == self.logits, cache_layout))
        return (
            block.group, block.signature, block.kind, len(cx.ops), bp.strategy, tuple(sorted(bp.degrees.items())),
            repr(sorted(bp.extras.items())), bp.layout_in, bp.layout_out, tuple(reads),
            tuple(fates),
        )

    # -- replay -------------------------------------------------------------------------
    def replay(self, cx: BlockLowering) -> list[str] | None:
        """Lower `cx`'s block as a renamed copy of a trusted record; None when there is none
        (or it does not rename onto this block): lower it by the rules."""
        key = self.key(cx)
        record = self.trusted.get(key) if key is not None else None
        if record is None:
            return None
        try:
            copy = self._rename(record, cx)
        except NotReusable:
            return None
        b = self.b
        if any(w.key in b.weights for w in copy.weights) or any(v.name in b.values for v in copy.values):
            return None
        b._counter = copy.counter[1]
        for v in copy.values:
            b.values[v.name] = v
        for w in copy.weights:
            b.weights[w.key] = w
        for value, local in copy.current:
            b.current[value] = local
        cx.inputs.extend(copy.inputs)
        cx.params = {p.key: p for p in copy.params}
        cx.steps = list(copy.steps)
        self.renamed_from[cx.block.name] = record.block
        return list(copy.outputs)

    # -- recording ----------------------------------------------------------------------
    def start(self, cx: BlockLowering) -> Recording:
        b = self.b
        return Recording(self.key(cx), b._counter, len(b.values), len(b.weights), len(cx.inputs))

    def finish(self, rec: Recording, cx: BlockLowering, outputs: list[str]) -> None:
        """Keep what lowering the block did; check the group's candidate record against it."""
        if rec.key is None or rec.key in self.trusted:
            return
        b = self.b
        produced = {o for op in cx.ops for o in op.outputs}
        external = {
            v: local for v, local in cx.primary.items()
            if v not in produced and v not in cx.defined and v not in b.graph.params
        }
        record = _Record(
            block=cx.block.name,
            ops=tuple(cx.ops),
            counter=(rec.counter, b._counter),
            external=external,
            inputs=tuple(cx.inputs[rec.inputs:]),
            values=tuple(list(b.values.values())[rec.values:]),
            weights=tuple(list(b.weights.values())[rec.weights:]),
            params=tuple(cx.params.values()),
            steps=tuple(cx.steps),
            outputs=tuple(outputs),
            current=tuple((b.values[local].source, local) for local in outputs),
        )
        candidate = self.candidate.get(rec.key)
        if candidate is not None:
            try:
                checks = self._rename(candidate, cx, counter=rec.counter) == record
            except NotReusable:
                checks = False
            if checks:
                self.trusted[rec.key] = candidate
                return
        tries = self.tries.get(rec.key, 0)
        if tries <= MAX_CANDIDATES:
            self.tries[rec.key] = tries + 1
            self.candidate[rec.key] = record

    # -- renaming -----------------------------------------------------------------------
    def _rename(self, record: _Record, cx: BlockLowering, counter: int | None = None) -> _Record:
        """`record` with every name changed to the one lowering `cx`'s block gives, numbering
        new local values from `counter` (default: the builder's counter now)."""
        b = self.b
        start = b._counter if counter is None else counter
        names = _Names(b, record.ops, cx.ops, self.skeletons)
        offset = start - record.counter[0]
        local: dict[str, str] = {}
        for v_old, l_old in record.external.items():
            v = names.value(v_old)
            found = cx.primary.get(v) or b.current.get(v)
            if found is None:
                raise NotReusable(v)
            local[l_old] = found
        weight_keys: dict[str, str] = {}
        for p in record.params:
            key = names.weight_key(p.key)
            weight_keys[p.key] = key
            local[p.local] = f"w__{identifier(key)}"
        if record.value_plan is None:  # both plans at once: either may raise NotReusable
            step_plan = tuple(
                (step, (_renamer(step.args), _renamer(step.kwargs)) if type(step) is Compute else None)
                for step in record.steps
            )
            record.value_plan, record.step_plan = _value_plan(record, set(local), names), step_plan
        values = []
        for v, number, hint in record.value_plan:
            source = names.source(v.source)
            if number is not None:
                local[v.name] = f"{identifier(source)}__{number + offset}"
                local[f"work_{v.name}"] = f"work_{local[v.name]}"
            values.append(LocalValue(local[v.name], source, v.spec, v.layout, v.local_shape,
                                     hint.apply(source, names)))

        def rn(name: str) -> str:
            try:
                return local[name]
            except KeyError:
                raise NotReusable(name) from None

        weights = tuple(  # every other field (layout, shapes, flags) carries over as recorded
            dataclasses.replace(
                w, key=names.weight_key(w.key), param=names.value(w.param), fqn=names.fqn(w.fqn),
                aliases=tuple(names.fqn(a) for a in w.aliases),
            )
            for w in record.weights
        )
        return _Record(
            block=cx.block.name,
            ops=tuple(cx.ops),
            counter=(start, start + record.counter[1] - record.counter[0]),
            external={names.value(v): rn(lo) for v, lo in record.external.items()},
            inputs=tuple(rn(i) for i in record.inputs),
            values=tuple(values),
            weights=weights,
            params=tuple(ParamUse(weight_keys[p.key], p.local_name, rn(p.local)) for p in record.params),
            steps=tuple(_rename_step(s, args, rn, names) for s, args in record.step_plan),
            outputs=tuple(rn(o) for o in record.outputs),
            current=tuple((names.source(v), rn(lo)) for v, lo in record.current),
        )


class _Names:
    """Graph value, op and parameter names of a recorded block -> those of a matching block,
    by position; raises NotReusable where the two blocks' ops differ."""

    def __init__(self, builder: Builder, old_ops: tuple[Op, ...], new_ops: list[Op],
                 skeletons: dict[str, tuple[tuple, Any, list[str]]]):
        """`skeletons` caches the recorded ops' argument skeletons by op name. The blocks'
        signatures (passes/group.py: op targets, output shapes, parameter shapes) are
        already equal, so only values from outside the block have their specs compared."""
        if len(old_ops) != len(new_ops):
            raise NotReusable("op count")
        graph_values, params = builder.graph.values, builder.graph.params
        values: dict[str, str] = {}
        self.values = values
        self.ops: dict[str, str] = {}
        self.fqns: dict[str, str] = {}
        taken: set[str] = set()
        for old, new in zip(old_ops, new_ops, strict=True):
            cached = skeletons.get(old.name)
            if cached is None:
                old_refs: list[str] = []
                cached = skeletons[old.name] = (_static(old), _skeleton(old.attrs, old_refs), old_refs)
            if cached[0] != _static(new):
                raise NotReusable(old.name)
            self.ops[old.name] = new.name
            for a, b in zip(old.inputs, new.inputs, strict=True):
                known = values.get(a)
                if known is not None:
                    if known != b:
                        raise NotReusable(a)
                    continue
                if b in taken:
                    raise NotReusable(b)
                pa, pb = params.get(a), params.get(b)
                if pa is None:
                    # a value from an earlier block (the signature covers the block's own)
                    sa, sb = graph_values.get(a), graph_values.get(b)
                    if pb is not None or (sa is not sb and sa != sb):
                        raise NotReusable(a)
                else:
                    if pb is None or (
                        pa.shape, pa.dtype, pa.is_buffer, pa.persistent, len(pa.aliases), bool(pa.tied_to)
                    ) != (pb.shape, pb.dtype, pb.is_buffer, pb.persistent, len(pb.aliases), bool(pb.tied_to)):
                        raise NotReusable(a)
                    for fa, fb in zip((pa.name, *pa.aliases), (pb.name, *pb.aliases), strict=True):
                        self.fqns[fa] = fb
                values[a] = b
                taken.add(b)
            for a, b in zip(old.outputs, new.outputs, strict=True):
                if a in values or b in taken:
                    raise NotReusable(a)
                values[a] = b
                taken.add(b)
            new_refs: list[str] = []
            if cached[1] != _skeleton(new.attrs, new_refs) or any(
                values.get(a) != b for a, b in zip(cached[2], new_refs, strict=True)
            ):
                raise NotReusable(old.name)

    def value(self, name: str) -> str:
        try:
            return self.values[name]
        except KeyError:
            raise NotReusable(name) from None

    def source(self, name: str) -> str:
        """A graph value, or a name a lowering derived from one or from an op
        (`{value}.nobias`, `{op}.helix0.part`)."""
        if name in self.values:
            return self.values[name]
        head, dot, rest = name.partition(".")
        if dot and head in self.values:
            return f"{self.values[head]}.{rest}"
        if dot and head in self.ops:
            return f"{self.ops[head]}.{rest}"
        raise NotReusable(name)

    def fqn(self, name: str) -> str:
        try:
            return self.fqns[name]
        except KeyError:
            raise NotReusable(name) from None

    def weight_key(self, key: str) -> str:
        """`{fqn}@{layout tag}[@view...]` (passes/lower/builder.py: Builder.weight)."""
        fqn, at, rest = key.partition("@")
        return self.fqn(fqn) + at + rest

    def new_fqn_identifier(self, old: str) -> str:
        return identifier(self.fqn(old))


@dataclass(frozen=True)
class _Hint:
    """How a local value's hint follows the rename: made from the value's source (`source`),
    from a parameter's name (`fqn`, the recorded one), or from the op's role (neither: kept)."""

    text: str
    suffix: str = ""
    source: bool = False
    fqn: str = ""

    def apply(self, new_source: str, names: _Names) -> str:
        if self.source:
            return identifier(new_source) + self.suffix
        if self.fqn:
            return names.new_fqn_identifier(self.fqn) + self.suffix
        return self.text


def _value_plan(record: _Record, mapped: set[str], names: _Names) -> tuple:
    """What renaming each recorded local value needs that depends on the record alone: the
    number lowering gave it (None for the block's externals and parameters, renamed through
    them) and its hint's rule; raises NotReusable for a name the renamer cannot number."""
    plan = []
    for v in record.values:
        number = None
        if v.name not in mapped:
            m = _NUMBERED.fullmatch(v.name)
            number = int(m.group(2)) if m else -1
            if not (record.counter[0] < number <= record.counter[1]) or m.group(1) != identifier(v.source):
                raise NotReusable(v.name)
        plan.append((v, number, _hint_rule(v.hint, v.source, names)))
    return tuple(plan)


def _hint_rule(hint: str, source: str, names: _Names) -> _Hint:
    """The first of the value's source and the block's parameter names (in the order the
    block's ops read them) that the hint starts with decides how it is renamed."""
    old = identifier(source)
    if old and hint.startswith(old):
        return _Hint(hint, hint[len(old):], source=True)
    for fqn in names.fqns:
        old = identifier(fqn)
        if old and hint.startswith(old):
            return _Hint(hint, hint[len(old):], fqn=fqn)
    return _Hint(hint)


def _static(op: Op) -> tuple:
    """What must be equal of two ops besides their arguments: target, arity, module types
    and the module attribute names read (passes/lower/builder.py: op_hint; a layer index
    such as `layers.3` is not one)."""
    leaf = op.module_path.rsplit(".", 1)[-1]
    return (op.target, len(op.inputs), len(op.outputs), op.module_types, "" if leaf.isdigit() else leaf)


_REF = object()


def _skeleton(x: Any, refs: list[str]) -> Any:
    """Constant arguments with each graph value replaced by one marker (names go to `refs`,
    in order): two ops' arguments agree when their skeletons are equal and their names map."""
    t = type(x)
    if t is ValueRef:
        refs.append(x.name)
        return _REF
    if t is list or t is tuple:
        return (t, tuple([_skeleton(v, refs) for v in x]))
    if t is dict:
        return (dict, tuple([(k, _skeleton(v, refs)) for k, v in x.items()]))
    return (t, x)


def _renamer(x: Any) -> Callable[[Callable[[str], str]], Any] | None:
    """A function giving `x` with every `ValueRef` renamed by the `rn` it is called with
    (containers holding one rebuilt, constants kept); None when `x` holds no `ValueRef`, so it
    is shared as is. Built once per record: the copies only call it."""
    t = type(x)
    if t is ValueRef:
        name = x.name
        return lambda rn: ValueRef(rn(name))
    if t is tuple or t is list:
        parts = [(_renamer(v), v) for v in x]
        if all(f is None for f, _ in parts):
            return None
        return lambda rn: t([v if f is None else f(rn) for f, v in parts])
    if t is dict:
        items = [(k, _renamer(v), v) for k, v in x.items()]
        if all(f is None for _, f, _ in items):
            return None
        return lambda rn: {k: v if f is None else f(rn) for k, f, v in items}
    if isinstance(x, (ValueRef, list, tuple, dict)):
        raise NotReusable(f"argument of type {t.__name__}")
    return None


def _rename_step(step: Step, renamers: tuple | None, rn, names: _Names) -> Step:
    """`step` renamed; `renamers` are a Compute's (`_renamer` of its args, of its kwargs)."""
    if type(step) is Compute:
        source_op = names.ops.get(step.source_op, "") if step.source_op else ""
        if step.source_op and not source_op:
            raise NotReusable(step.source_op)
        args, kwargs = renamers
        return Compute(step.target, step.args if args is None else args(rn),
                       step.kwargs if kwargs is None else kwargs(rn),
                       tuple(rn(o) for o in step.outputs), source_op)
    if type(step) is LocalShard:
        return LocalShard(step.axis, step.dim, rn(step.input), rn(step.output))
    if type(step) is Collective:
        return Collective(step.kind, step.axis, rn(step.input), rn(step.output), rn(step.handle),
                          step.src_dim, step.dst_dim)
    if type(step) is Wait:
        return Wait(rn(step.handle), rn(step.output))
    raise NotReusable(type(step).__name__)
