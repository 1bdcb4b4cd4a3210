"""Lower a `RankProgram` to the template context of `run_plan.py`.

One function per distinct block body: blocks of one repeated-layer group under one strategy
render to the same text (names inside a function come from op roles, not from layer
numbers) and share it; a block whose body differs gets its own function. The driver
(`forward`) binds B, T, L from the inputs, runs edge conversions and calls the functions.
"""

from __future__ import annotations

import json
import pprint
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codegen.context import FunctionContext, Line, PlanRow, ProgramContext
from codegen.emit import Namer, Renderer, RenderState, count_readers, identifier, py_expr
from ir.plan import Plan
from ir.rank_program import BlockProgram, Compute, EdgeProgram, RankProgram
from ir.tensor import B, T

STRATEGY_NOTES = {
    "replicate": "the whole block on every tp rank",
    "dp": "the batch split over tp; whole weights, own sequences' KV cache",
    "tp": "heads / FFN columns split over tp (column-parallel in, row-parallel out)",
    "tp_sp": "tp with the residual stream split along tokens (all-gather in, reduce-scatter out)",
    "vocab": "vocabulary rows split over tp",
    "cp_pass_kv": "ring attention over cp, pass-KV: KV blocks rotate, queries stay; LSE merge",
    "cp_pass_q": "ring attention over cp, pass-Q: queries rotate, all-to-all of partials; LSE merge",
    "helix": (
        "Helix: KV split along the sequence over kvp, heads over tp; partial attention, "
        "all-to-all over kvp, log-sum-exp combine; output projection row-parallel over kvp×tp"
    ),
    "ep": "experts split over kvp×tp; each rank computes its experts' tokens, one all-reduce",
    "ep_dispatch": (
        "batch split over kvp×tp; tokens sent by all-to-all to their experts' ranks and back"
    ),
    "tp_ep": "experts split over kvp, each expert's FFN columns over tp; one all-reduce",
}


@dataclass
class _Rendered:
    block: BlockProgram
    args: list[str]
    body: list[Line]
    returns: list[str]
    context_args: list[str]
    arg_docs: list[str]

    def text(self) -> str:
        return "\n".join([",".join(self.args), ",".join(self.context_args)] + [ln.text for ln in self.body] + self.returns)


def _arg_base(program: RankProgram, block: BlockProgram, local: str, stream_seen: list[str]) -> str:
    v = program.values[local]
    inputs = {p.name: p for p in program.inputs}
    if v.source in inputs:
        name = v.source
        if inputs[name].role == "cache":
            parts = name.split("_")
            if len(v.spec.shape) == 4 and parts[-1] in ("0", "1"):
                return "past_key" if parts[-1] == "0" else "past_value"
            return "past_latent"
        return name
    shape = v.spec.shape
    is_stream = (
        len(shape) >= 2
        and shape[0] == B
        and shape[1] == T
        and v.spec.dtype.startswith(("float", "bfloat"))
        and len(shape) == 3
    )
    if is_stream:
        first = next((s for s in block.steps if local in s.reads()), None)
        if isinstance(first, Compute) and first.target == "add.Tensor":
            return "residual"
        stream_seen.append(local)
        return "hidden"
    if v.spec.dtype == "bool" and len(shape) == 4:
        return "attn_mask"
    return v.hint or identifier(v.source)


def _render_block(program: RankProgram, block: BlockProgram) -> _Rendered:
    namer = Namer()
    names: dict[str, str] = {}
    args: list[str] = []
    arg_docs: list[str] = []
    stream_seen: list[str] = []
    for local in block.inputs:
        names[local] = namer.fresh(_arg_base(program, block, local, stream_seen))
        args.append(names[local])
        v = program.values[local]
        arg_docs.append(f"{names[local]}: {py_shape(v.local_shape)} {v.layout.describe()}")
    weight_expr = {p.local: f"w[{_q(p.local_name)}]" for p in block.params}
    state = RenderState(names=names)
    renderer = Renderer(program, state, weight_expr=weight_expr)

    def define(local: str, base: str | None = None) -> str:
        v = program.values.get(local)
        base = base or (v.hint if v is not None else _handle_base(local, names))
        names[local] = namer.fresh(base)
        return names[local]

    readers = count_readers(block.steps)
    body: list[Line] = []
    for step in block.steps:
        body.extend(renderer.step_lines(step, define, readers))
    returns = [names[o] for o in block.outputs]
    context = []
    if block.params:
        context.append("w")
    if state.uses_pg:
        context.append("pg")
    if state.uses_device:
        context.append("device")
    context += sorted(state.symbols)
    return _Rendered(block, args, body, returns, context, arg_docs)


def _rendered_blocks(program: RankProgram):
    """(block, rendering, its text) in program order. A block lowered as a renamed copy of
    another (`RankProgram.renamed_from`) renders to that block's text when its names come
    from op roles, as in a repeated layer; that is checked on its first copy, which is
    rendered, and the later copies take the text without rendering."""
    done: dict[str, tuple[_Rendered, str]] = {}
    alike: dict[str, bool] = {}
    for block in program.blocks:
        template = program.renamed_from.get(block.name)
        if template is not None and alike.get(template):
            r, text = done[template]
            yield block, r, text
            continue
        r = _render_block(program, block)
        text = r.text()
        if template is not None and template in done and template not in alike:
            alike[template] = text == done[template][1]
        done[block.name] = (r, text)
        yield block, r, text


def _handle_base(local: str, names: dict[str, str] | None = None) -> str:
    if local.startswith("work_"):
        return "work_" + (names or {}).get(local[5:], "")
    if local.endswith("_parts"):
        return "parts"
    if local.endswith("_send"):
        return "send"
    return "tmp"


def _q(text: str) -> str:
    """A string literal for generated code (names come from the user's model)."""
    return json.dumps(text)


def py_shape(shape) -> str:
    return "[" + ", ".join(py_expr(d) for d in shape) + "]"


def _function_name(block: BlockProgram) -> str:
    base = identifier(block.group or block.kind)
    return f"{base}_{identifier(block.strategy)}"


def _functions(program: RankProgram) -> tuple[list[FunctionContext], dict[str, tuple[str, _Rendered]]]:
    by_text: dict[str, str] = {}
    used: set[str] = set()
    funcs: list[FunctionContext] = []
    call_of: dict[str, tuple[str, _Rendered]] = {}
    users: dict[str, list[str]] = {}
    rendered_by_name: dict[str, _Rendered] = {}
    for block, r, text in _rendered_blocks(program):
        key = f"{block.group}|{block.strategy}|{text}"
        if key not in by_text:
            base = _function_name(block)
            name, n = base, 2
            while name in used:
                name, n = f"{base}_v{n}", n + 1
            used.add(name)
            by_text[key] = name
            rendered_by_name[name] = r
        name = by_text[key]
        users.setdefault(name, []).append(block.name)
        call_of[block.name] = (name, r)
    for name, r in rendered_by_name.items():
        b = r.block
        doc = [
            f"{b.kind} block, strategy {b.strategy}: {STRATEGY_NOTES.get(b.strategy, b.strategy)}.",
            f"Used by: {', '.join(users[name])}.",
            f"Residual stream in: {b.layout_in}; out: {b.layout_out}.",
            "",
            "Inputs (local shape, layout):",
            *[f"    {d}" for d in r.arg_docs],
            f"Returns: {', '.join(r.returns)}.",
        ]
        signature = ", ".join(r.args + (["*"] + r.context_args if r.context_args else []))
        body = list(r.body) + [Line(f"return {_tuple_text(r.returns)}")]
        funcs.append(FunctionContext(name=name, signature=signature, doc=tuple(doc), body=tuple(body)))
    return funcs, call_of


def _tuple_text(items: list[str]) -> str:
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(items) + ")"


def _forward(
    program: RankProgram,
    call_of: dict[str, tuple[str, _Rendered]],
    recomputed: frozenset[str] = frozenset(),
) -> FunctionContext:
    """forward(): the blocks in order. A block in `recomputed` (a training plan's choice)
    runs through `recompute`, which keeps only its inputs for backward."""
    namer = Namer({"inputs", "weights", "pg", "device", "recompute"})
    names: dict[str, str] = {}
    body: list[Line] = []
    for sym in program.symbols:
        factor = f" * {sym.factor}" if sym.factor != 1 else ""
        body.append(Line(f"{sym.symbol} = inputs[{_q(sym.input)}].shape[{sym.dim}]{factor}", f"global {sym.symbol}"))
    state = RenderState(names=names)
    renderer = Renderer(program, state, weight_expr={})
    for p in program.inputs:
        names[p.local] = namer.fresh(identifier(p.name))
        v = program.values[p.local]
        body.append(Line(f"{names[p.local]} = inputs[{_q(p.name)}]", renderer.layout_comment(v)))

    def define(local: str, base: str | None = None) -> str:
        v = program.values.get(local)
        if base is None:
            base = identifier(v.source) if v is not None else _handle_base(local, names)
        names[local] = namer.fresh(base)
        return names[local]

    for item in program.items:
        if isinstance(item, EdgeProgram):
            body.append(Line(f"# edge into {item.before_block}: residual stream to its layout_in"))
            readers = count_readers(item.steps)
            for step in item.steps:
                body.extend(renderer.step_lines(step, define, readers))
            continue
        fn, r = call_of[item.name]
        args = [names[i] for i in item.inputs]
        ctx = []
        for c in r.context_args:
            if c == "w":
                ctx.append(f"w=weights[{_q(item.name)}]")
            else:
                ctx.append(f"{c}={c}")
        outs = [define(o) for o in item.outputs]
        lhs = (", ".join(outs) + ("," if len(outs) == 1 else "")) if outs else "_"
        if item.name in recomputed:
            body.append(Line(
                f"{lhs} = recompute({fn}, {', '.join(args + ctx)})",
                f"{item.name} (recomputed in backward)",
            ))
        else:
            body.append(Line(f"{lhs} = {fn}({', '.join(args + ctx)})", f"{item.name}"))
    returns = ", ".join(f"{_q(o.name)}: {names[o.local]}" for o in program.outputs)
    body.append(Line("return {" + returns + "}"))
    doc = (
        "One forward step on this rank's shard of the inputs (graph inputs by name).",
        "Returns the graph outputs by name: logits, then the new K/V of the step's tokens,",
        "each in its layout (OUTPUTS).",
    )
    uses_device = state.uses_device or any("device" in r.context_args for _, r in call_of.values())
    sig = "inputs, weights, pg" + (", device" if uses_device else "")
    return FunctionContext(name="forward", signature=sig, doc=doc, body=tuple(body))


def _cache_shapes(program: RankProgram) -> FunctionContext:
    body = []
    items = []
    for c in program.caches:
        local = next(p.local for p in program.inputs if p.name == c.input)
        shape = program.values[local].local_shape
        items.append(f'{_q(c.input)}: ({", ".join(py_expr(d) for d in shape)})')
    body.append(Line("return {" + ", ".join(items) + "}"))
    return FunctionContext(
        name="cache_shapes",
        signature="B, L",
        doc=("This rank's shape of each KV cache holding L tokens for a global batch of B.",),
        body=tuple(body),
    )


def _shards(program: RankProgram, layout) -> list[tuple[str, int]]:
    return [(a, p.dim) for a, p in layout.placements if p.is_shard]


def _sections(layout) -> dict[str, dict[int, list[int]]]:
    """`{"sections": {dim: sizes}}` for a weight split section by section (a fused
    projection, passes/lower/fused.py), read by the loader's `take_shard`; else nothing."""
    dims = {p.dim: list(p.sections) for _, p in layout.placements if p.sections}
    return {"sections": dims} if dims else {}


def _literal(x: Any) -> str:
    """A Python literal; lists and dicts of records one record per line."""
    if isinstance(x, list) and x and all(isinstance(v, dict) for v in x):
        return "[\n" + "".join(f"    {_literal(v)},\n" for v in x) + "]"
    if isinstance(x, dict) and x and all(isinstance(v, dict) for v in x.values()):
        return "{\n" + "".join(f"    {k!r}: {_literal(v)},\n" for k, v in x.items()) + "}"
    if _plain(x):
        return repr(x)  # what pformat gives on one line (width 10**6, insertion order)
    return pprint.pformat(x, width=10**6, sort_dicts=False)


_SCALARS = (str, int, float, bool, type(None))


def _plain(x: Any) -> bool:
    """Built of str, numbers, None, lists, tuples and dicts only: `repr` is its pformat."""
    t = type(x)
    if t in _SCALARS:
        return True
    if t is list or t is tuple:
        return all(_plain(v) for v in x)
    if t is dict:
        return all(type(k) in _SCALARS and _plain(v) for k, v in x.items())
    return False


def build_context(program: RankProgram, plan: Plan, *, model_file: str) -> ProgramContext:
    funcs, call_of = _functions(program)
    recomputed = frozenset(b.name for b in plan.blocks if b.extras.get("recompute"))
    forward = _forward(program, call_of, recomputed)
    rows = []
    for bp in plan.blocks:
        fn = call_of.get(bp.name, ("-", None))[0]
        degrees = " ".join(f"{k}={v}" for k, v in bp.degrees.items()) or "-"
        rows.append(PlanRow(bp.name, bp.kind, bp.strategy, degrees, f"{bp.layout_in} -> {bp.layout_out}", fn))
    weights = [
        {
            "key": w.key,
            "fqn": w.fqn,
            "aliases": list(w.aliases),
            "shape": list(w.shape),
            "shards": _shards(program, w.layout),
            "local_shape": list(w.local_shape),
            "view": list(w.view),
            "persistent": w.persistent,
            "buffer": w.buffer,
            **_sections(w.layout),
        }
        for w in program.weights
    ]
    block_weights = {b.name: {p.local_name: p.key for p in b.params} for b in program.blocks}
    zero_levels = _zero_levels(plan, block_weights)
    vocab_size = max((int(b.dims.get("vocab", 0)) for b in plan.blocks), default=0)
    inputs = {
        p.name: {"role": p.role, "shards": _shards(program, program.values[p.local].layout)}
        for p in program.inputs
    }
    outputs = {
        o.name: {"role": o.role, "shards": _shards(program, program.values[o.local].layout)}
        for o in program.outputs
    }
    caches = [
        {
            "input": c.input,
            "output": c.output,
            "length_dim": c.length_dim,
            "kvp_block": c.kvp_block,
            "dtype": program.values[next(p.local for p in program.inputs if p.name == c.input)].spec.dtype,
        }
        for c in program.caches
    ]
    source = dict(program.meta.get("source") or {})
    model_args = dict(source.get("model_args") or {})
    workload = dict(plan.workload)
    mesh = {k: int(v) for k, v in plan.mesh.items()}
    predicted = []
    for k, v in (plan.predicted or {}).items():
        if isinstance(v, float):
            predicted.append(f"{k}: {v:.4g}")
        elif isinstance(v, (int, str)):
            predicted.append(f"{k}: {v}")
    return ProgramContext(
        title=f"{source.get('path', model_file)} on {program_mesh_text(mesh)}",
        model_display=str(source.get("path", model_file)),
        model_file=str(Path(model_file).resolve()),
        model_file_name=Path(model_file).name,
        model_args=_literal(model_args),
        mesh=_literal(mesh),
        mesh_text=program_mesh_text(mesh),
        axes=_literal(tuple(program.axes)),
        world_size=plan.world_size,
        workload=_literal(workload),
        workload_text=", ".join(f"{k}={v}" for k, v in workload.items() if v is not None),
        plan_rows=tuple(rows),
        plan_table=_table(rows),
        predicted=tuple(predicted),
        functions=tuple(funcs),
        forward=forward,
        cache_shapes=_cache_shapes(program),
        weights=_literal(weights),
        block_weights=_literal(block_weights),
        inputs=_literal(inputs),
        outputs=_literal(outputs),
        caches=_literal(caches),
        zero_levels=_literal(zero_levels),
        vocab_size=vocab_size,
    )


def _zero_levels(plan: Plan, block_weights: dict[str, dict[str, str]]) -> dict[str, int]:
    """Per weight key, the dp sharding level the plan chose for the blocks reading it (the
    lowest, when blocks that share a weight differ); inference plans have none."""
    levels: dict[str, int] = {}
    for bp in plan.blocks:
        if "zero" not in bp.extras:
            continue
        for key in block_weights.get(bp.name, {}).values():
            levels[key] = min(levels.get(key, 3), int(bp.extras["zero"]))
    return levels


def _table(rows: list[PlanRow]) -> tuple[str, ...]:
    head = PlanRow("block", "kind", "strategy", "degrees", "layout in -> out", "function")
    cols = list(zip(*[(r.block, r.kind, r.strategy, r.degrees, r.layouts, r.function) for r in [head, *rows]], strict=True))
    widths = [max(len(c) for c in col) for col in cols]
    lines = []
    for i, r in enumerate([head, *rows]):
        cells = (r.block, r.kind, r.strategy, r.degrees, r.layouts, r.function)
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return tuple(lines)


def program_mesh_text(mesh: dict[str, int]) -> str:
    used = [f"{k}={v}" for k, v in mesh.items() if v > 1]
    return " x ".join(used) if used else "1 rank"
