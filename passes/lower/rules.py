"""Layout rules: for each op, the input layouts it needs and the output layouts it makes.

A rule works one mesh axis at a time (placements on different axes are independent) and
hands `BlockLowering.emit_compute` the layout each input must have — the lowering inserts
the conversion — and each output's layout. Rules prefer what is free: a replicated operand
meeting a sharded one is sliced locally; a Partial operand meeting a sharded one is
reduce-scattered; otherwise a Partial is all-reduced and an unusable shard is all-gathered.

Ops: pointwise (with broadcasting), factories, linear (column / row parallel by weight
placement; a row-parallel bias is added once, after the reduction; a fused projection the
model cuts into sections is split section by section, passes/lower/fused.py), embedding (vocab-split
rows: masked local lookup, Partial), norms, softmax, batched matmul (eager attention's
scores and outputs), scaled_dot_product_attention (batch or head splits, taken from the
queries or, when those are whole, from the keys), view/reshape/flatten/unsqueeze/squeeze (shard follows the outermost merged or
split dim), expand, transpose/permute, slice/select/chunk/split/unbind, cat/stack and
reductions. An op without a rule runs only on fully replicated inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ir.graph import Op, ValueRef
from ir.layout import PARTIAL, REPLICATE, Layout, Placement, shard
from ir.rank_program import AxisRank
from passes.lower.builder import JOINED_MODEL_AXIS, MODEL_AXES, same, tensor_refs
from passes.lower.lower import BlockLowering

Rule = Callable[[BlockLowering, Op], None]
RULES: dict[str, Rule] = {}

INT64_MAX = 2**63 - 1


def rule(*targets: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for t in targets:
            RULES[t] = fn
        return fn

    return register


def rule_for(op: Op) -> Rule:
    from passes.lower import views  # noqa: F401  (registers the movement rules)

    return RULES.get(op.target, unknown_op)


# -- helpers ------------------------------------------------------------------------------


def arg(op: Op, index: int, name: str, default=None):
    args = op.attrs.get("args", ())
    if index < len(args):
        return args[index]
    return op.attrs.get("kwargs", {}).get(name, default)


def norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def covers(cx: BlockLowering, value: str, out_shape: tuple, out_dim: int) -> int | None:
    """The dim of `value` that lines up with `out_dim` of a broadcast result, when it is a
    real (non-broadcast) dim; else None."""
    shape = cx.spec(value).shape
    d = out_dim - (len(out_shape) - len(shape))
    if d < 0:
        return None
    size, out_size = shape[d], out_shape[out_dim]
    if out_size == 1 or not same(size, out_size):
        return None
    return d


def reduce_target(cx: BlockLowering, value: str, axis: str) -> Placement:
    """Where a Partial `value` should land: the shard its first pointwise consumer pairs it
    with (reduce-scatter, as sequence parallelism does), else Replicate (all-reduce)."""
    out_shape = cx.spec(value).shape
    for consumer in cx.consumers.get(value, ()):
        if consumer.target not in POINTWISE:
            continue
        for other in consumer.inputs:
            if other == value or cx.is_param(other):
                continue
            p = cx.on(other, axis)
            if not p.is_shard:
                continue
            o_rank, c_rank = cx.rank(other), len(cx.spec(consumer.outputs[0]).shape)
            out_dim = p.dim + c_rank - o_rank
            d = out_dim - (c_rank - len(out_shape))
            if d >= 0 and same(out_shape[d], cx.spec(other).shape[p.dim]):
                return shard(d)
    return REPLICATE


def unify(
    cx: BlockLowering,
    values: list[str],
    out_shape: tuple,
    axis: str,
    *,
    partial_ok: bool = False,
    blocked_dims: frozenset[int] = frozenset(),
) -> tuple[dict[str, Placement], Placement]:
    """Placements on `axis` for operands broadcast to `out_shape`, and the result's: the
    first operand's shard wins (others sliced, re-sharded or reduce-scattered to match; a
    sectioned shard's sections too, see passes/lower/fused.py);
    with no shard, Partials are all-reduced (or kept when `partial_ok` and all are
    Partial). Shards on `blocked_dims` (output dims) are gathered."""
    n = len(out_shape)
    pl = {v: cx.on(v, axis) for v in values}
    if partial_ok and values and all(p.is_partial for p in pl.values()):
        return dict(pl), PARTIAL
    out_dim, sections = None, ()
    for v, p in pl.items():
        if p.is_shard:
            d = p.dim + n - cx.rank(v)
            if d not in blocked_dims and covers(cx, v, out_shape, d) is not None:
                out_dim, sections = d, p.sections
                break
    want: dict[str, Placement] = {}
    for v in values:
        d = covers(cx, v, out_shape, out_dim) if out_dim is not None else None
        want[v] = shard(d, sections) if d is not None else REPLICATE
    return want, (shard(out_dim, sections) if out_dim is not None else REPLICATE)


def with_axes(cx: BlockLowering, value: str, per_axis: dict[str, Placement]) -> Layout:
    layout = cx.layout(value)
    for axis, p in per_axis.items():
        layout = layout.with_axis(axis, p)
    return layout


def build(cx: BlockLowering, per_axis: dict[str, Placement]) -> Layout:
    layout = Layout.replicated(cx.axes)
    for axis, p in per_axis.items():
        layout = layout.with_axis(axis, p)
    return layout


def operands(op: Op, cx: BlockLowering) -> list[str]:
    """Tensor operands in argument order (parameters included)."""
    refs = tensor_refs((op.attrs.get("args", ()), op.attrs.get("kwargs", {})))
    return [r for r in dict.fromkeys(refs) if r in cx.graph.values or cx.is_param(r)]


# -- pointwise ----------------------------------------------------------------------------

POINTWISE = frozenset(
    {
        "add.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "rsub.Scalar", "rsub.Tensor",
        "mul.Tensor", "mul.Scalar", "div.Tensor", "div.Scalar", "div.Tensor_mode", "neg",
        "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "reciprocal", "sqrt", "rsqrt",
        "exp", "log", "sin", "cos", "tanh", "sigmoid", "silu", "gelu", "relu", "abs", "erf",
        "where.self", "where.ScalarOther", "where.ScalarSelf", "masked_fill.Scalar",
        "masked_fill.Tensor", "eq.Tensor", "eq.Scalar", "ne.Tensor", "ne.Scalar", "lt.Tensor",
        "lt.Scalar", "le.Tensor", "le.Scalar", "gt.Tensor", "gt.Scalar", "ge.Tensor",
        "ge.Scalar", "__and__.Tensor", "__or__.Tensor", "__xor__.Tensor", "bitwise_and.Tensor",
        "bitwise_or.Tensor", "bitwise_not", "logical_and", "logical_or", "logical_not",
        "maximum", "minimum", "clamp", "clamp_min", "clamp_max", "to.dtype", "_to_copy",
        "clone", "contiguous", "alias", "detach", "type_as", "lift_fresh_copy", "softplus",
        "square", "log1p", "expm1", "floor", "ceil", "round", "sign", "mul_.Tensor", "div_.Tensor",
        "add_.Tensor", "sub_.Tensor",
    }
)
# Sums of Partials stay Partial; everything else reduces first.
PARTIAL_LINEAR = frozenset({"add.Tensor", "sub.Tensor"})


@rule(*POINTWISE)
def pointwise(cx: BlockLowering, op: Op) -> None:
    out = op.outputs[0]
    out_shape = cx.spec(out).shape
    values = operands(op, cx)
    args = op.attrs.get("args", ())
    tensor_only = all(isinstance(a, ValueRef) for a in args) and not op.attrs.get("kwargs")
    want = {v: {} for v in values}
    out_pl: dict[str, Placement] = {}
    for axis in cx.axes:
        partial_ok = op.target in PARTIAL_LINEAR and tensor_only
        placed, result = unify(cx, values, out_shape, axis, partial_ok=partial_ok)
        for v in values:
            want[v][axis] = placed[v]
        out_pl[axis] = result
    cx.emit_compute(
        op,
        {v: with_axes(cx, v, want[v]) for v in values},
        [(out, build(cx, out_pl))],
    )


FACTORIES = frozenset(
    {
        "arange", "arange.start", "arange.start_step", "full", "zeros", "ones", "empty",
        "empty.memory_format", "scalar_tensor", "randn", "rand", "tensor",
    }
)


@rule(*FACTORIES)
def factory(cx: BlockLowering, op: Op) -> None:
    cx.emit_compute(op, {}, [(v, Layout.replicated(cx.axes)) for v in op.outputs])


def unknown_op(cx: BlockLowering, op: Op) -> None:
    values = operands(op, cx)
    for v in values:
        if not cx.layout(v).is_replicated:
            raise cx.fail(op, "has no layout rule and an input is split or partial")
    cx.emit_compute(op, {v: cx.layout(v) for v in values}, [(v, Layout.replicated(cx.axes)) for v in op.outputs if v in cx.graph.values])


# -- linear, embedding --------------------------------------------------------------------


@rule("linear")
def linear(cx: BlockLowering, op: Op) -> None:
    x, w = arg(op, 0, "input").name, arg(op, 1, "weight").name
    b_ref = arg(op, 2, "bias")
    b = b_ref.name if isinstance(b_ref, ValueRef) else None
    out = op.outputs[0]
    x_rank, out_rank = cx.rank(x), cx.rank(out)
    want_x, want_w, want_b, out_pl = {}, {}, {}, {}
    row_parallel_axes = []
    for axis in cx.axes:
        px = cx.on(x, axis)
        pw = REPLICATE
        if axis in cx.split_axes:
            pw = cx.strategy.weight_placement(
                cx.graph,
                cx.block,
                op,
                w,
                input_split_last=px.is_shard and px.dim == x_rank - 1,
                axis_size=cx.sizes[axis],
                axis=axis,
            )
        want_w[axis] = pw
        if pw.is_shard and pw.dim == 0:  # column parallel
            want_x[axis], want_b[axis], out_pl[axis] = REPLICATE, shard(0), shard(out_rank - 1)
        elif pw.is_shard and pw.dim == 1:  # row parallel
            want_x[axis], want_b[axis], out_pl[axis] = shard(x_rank - 1), REPLICATE, PARTIAL
            row_parallel_axes.append(axis)
        else:
            keep = px.is_shard and px.dim < x_rank - 1
            want_x[axis] = px if keep else REPLICATE
            want_b[axis], out_pl[axis] = REPLICATE, (px if keep else REPLICATE)
    by_sections(cx, out, [a for a in cx.axes if want_w[a] == shard(0)], (want_w, 0), (want_b, 0),
                (out_pl, out_rank - 1))
    if cx.is_param(w):
        cx.param(w, build(cx, want_w))
    if b is not None and cx.is_param(b):
        cx.param(b, build(cx, want_b))
    inputs = {x: with_axes(cx, x, want_x), w: build(cx, want_w)}
    if b is None or not row_parallel_axes:
        if b is not None:
            inputs[b] = build(cx, want_b)
        cx.emit_compute(op, inputs, [(out, build(cx, out_pl))])
        return
    # Row parallel with bias: the bias is added once, after the reduction.
    partial = f"{out}.nobias"
    cx.extra_specs[partial] = cx.spec(out)
    args = list(op.attrs.get("args", ()))[:2]
    cx.emit_compute(op, inputs, [(partial, build(cx, out_pl))], args=args, kwargs={})
    add_bias_after_reduction(cx, op, partial, out_pl, row_parallel_axes, b, want_b)


def by_sections(
    cx: BlockLowering, out: str, column_axes: list[str], *placed: tuple[dict[str, Placement], int]
) -> None:
    """A column-parallel projection whose output the model cuts into sections (a fused
    Q|K|V or gate|up) splits each section over `column_axes` instead of its columns as one
    block (passes/lower/fused.py): each (placements, dim) pair — weight, bias, output —
    becomes a sectioned shard of that dim on those axes. Unchanged when the output is used
    any other way or a section does not divide."""
    from passes.lower.fused import fused_sections

    if not column_axes:
        return
    parts = math.prod(cx.sizes[axis] for axis in column_axes)
    out_dim = placed[-1][1]
    sections = fused_sections(cx, out, out_dim, parts)
    if not sections:
        return
    for placements, dim in placed:
        for axis in column_axes:
            placements[axis] = shard(dim, sections)


def add_bias_after_reduction(
    cx: BlockLowering, op: Op, partial: str, out_pl: dict[str, Placement], row_axes: list[str],
    bias: str, want_b: dict[str, Placement],
) -> None:
    """A row-parallel projection's Partial result `partial` is reduced (all-reduce, or
    reduce-scatter to what its consumer pairs it with) and the bias added once, after it."""
    out = op.outputs[0]
    reduced = dict(out_pl)
    for axis in row_axes:
        reduced[axis] = reduce_target(cx, out, axis)
    cx.emit_compute(
        op,
        {partial: build(cx, reduced), bias: build(cx, want_b)},
        [(out, build(cx, reduced))],
        target="add.Tensor",
        args=[ValueRef(partial), ValueRef(bias)],
        kwargs={},
        hint=None,
    )


@rule("addmm")
def addmm(cx: BlockLowering, op: Op) -> None:
    """`bias + x @ w` with w [in, out] (GPT-2's Conv1D): column-parallel when w's columns
    are split (bias split alike, output split along its last dim), row-parallel when x
    arrives split along its last dim (w's rows split, output Partial, the bias added once
    after the reduction). x [rows, in] may stay split along its rows."""
    b, x, w = arg(op, 0, "self").name, arg(op, 1, "mat1").name, arg(op, 2, "mat2").name
    if not cx.is_param(w) or not cx.is_param(b) or op.attrs.get("kwargs") or len(op.attrs.get("args", ())) != 3:
        unknown_op(cx, op)
        return
    out = op.outputs[0]
    want_x, want_w, want_b, out_pl, row_axes = {}, {}, {}, {}, []
    for axis in cx.axes:
        px = cx.on(x, axis)
        pw = REPLICATE
        if axis in cx.split_axes:
            pw = cx.strategy.weight_placement(
                cx.graph, cx.block, op, w, input_split_last=px.is_shard and px.dim == 1,
                axis_size=cx.sizes[axis], axis=axis,
            )
        want_w[axis] = pw
        if pw.is_shard and pw.dim == 1:  # column parallel
            want_x[axis], want_b[axis], out_pl[axis] = REPLICATE, shard(0), shard(1)
        elif pw.is_shard and pw.dim == 0:  # row parallel
            want_x[axis], want_b[axis], out_pl[axis] = shard(1), REPLICATE, PARTIAL
            row_axes.append(axis)
        else:
            keep = px.is_shard and px.dim == 0
            want_x[axis] = px if keep else REPLICATE
            want_b[axis], out_pl[axis] = REPLICATE, (px if keep else REPLICATE)
    by_sections(cx, out, [a for a in cx.axes if want_w[a] == shard(1)], (want_w, 1), (want_b, 0), (out_pl, 1))
    cx.param(w, build(cx, want_w))
    cx.param(b, build(cx, want_b))
    inputs = {x: with_axes(cx, x, want_x), w: build(cx, want_w)}
    if not row_axes:
        inputs[b] = build(cx, want_b)
        cx.emit_compute(op, inputs, [(out, build(cx, out_pl))])
        return
    partial = f"{out}.nobias"
    cx.extra_specs[partial] = cx.spec(out)
    cx.emit_compute(op, inputs, [(partial, build(cx, out_pl))], target="mm",
                    args=[ValueRef(x), ValueRef(w)], kwargs={})
    add_bias_after_reduction(cx, op, partial, out_pl, row_axes, b, want_b)


@rule("embedding")
def embedding(cx: BlockLowering, op: Op) -> None:
    w, ids = arg(op, 0, "weight").name, arg(op, 1, "indices").name
    out = op.outputs[0]
    want_w, want_ids, out_pl = {}, {}, {}
    split_axes = []
    for axis in cx.axes:
        pids = cx.on(ids, axis)
        pw = REPLICATE
        if axis in cx.split_axes:
            pw = cx.strategy.weight_placement(
                cx.graph, cx.block, op, w, input_split_last=False, axis_size=cx.sizes[axis], axis=axis
            )
        want_w[axis] = pw
        if pw.is_shard:
            if pw.dim != 0:
                raise cx.fail(op, f"cannot split an embedding table along dim {pw.dim}")
            split_axes.append(axis)
            want_ids[axis], out_pl[axis] = REPLICATE, PARTIAL
        else:
            want_ids[axis] = REPLICATE if pids.is_partial else pids
            out_pl[axis] = want_ids[axis]
    cx.param(w, build(cx, want_w))
    inputs = {ids: with_axes(cx, ids, want_ids), w: build(cx, want_w)}
    if not split_axes:
        cx.emit_compute(op, inputs, [(out, build(cx, out_pl))])
        return
    if len(split_axes) > 1 and tuple(split_axes) != MODEL_AXES:
        raise cx.fail(op, f"cannot split an embedding table over {split_axes}")
    # Rows split over kvp and tp (kvp-major) are one split over the joined model group.
    split_axis = split_axes[0] if len(split_axes) == 1 else JOINED_MODEL_AXIS
    cx.emit_compute(
        op,
        inputs,
        [(out, build(cx, out_pl))],
        target="vocab_embedding",
        args=[ValueRef(ids), ValueRef(w), AxisRank(split_axis)],
        kwargs={},
    )


# -- normalization, softmax, reductions ---------------------------------------------------


@rule("rms_norm", "layer_norm", "native_layer_norm")
def norm(cx: BlockLowering, op: Op) -> None:
    x = arg(op, 0, "input").name
    k = len(arg(op, 1, "normalized_shape"))
    rank = cx.rank(x)
    want: dict[str, Placement] = {}
    for axis in cx.axes:
        p = cx.on(x, axis)
        want[axis] = p if p.is_shard and p.dim < rank - k else REPLICATE
    inputs = {x: with_axes(cx, x, want)}
    for v in operands(op, cx)[1:]:
        inputs[v] = Layout.replicated(cx.axes)
        if cx.is_param(v):
            cx.param(v, inputs[v])
    outs = [(v, build(cx, want)) for v in op.outputs[:1]]
    cx.emit_compute(op, inputs, outs)


@rule("_softmax", "softmax.int", "_log_softmax", "log_softmax.int")
def softmax(cx: BlockLowering, op: Op) -> None:
    x = arg(op, 0, "self").name
    dim = norm_dim(arg(op, 1, "dim"), cx.rank(x))
    want = {}
    for axis in cx.axes:
        p = cx.on(x, axis)
        want[axis] = p if p.is_shard and p.dim != dim else REPLICATE
    cx.emit_compute(op, {x: with_axes(cx, x, want)}, [(op.outputs[0], build(cx, want))])


@rule("sum.dim_IntList", "mean.dim", "amax", "amin", "var.correction", "std.correction")
def reduction(cx: BlockLowering, op: Op) -> None:
    x = arg(op, 0, "self").name
    rank = cx.rank(x)
    dims = arg(op, 1, "dim")
    dims = list(range(rank)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    dims = [norm_dim(d, rank) for d in dims]
    if op.target.startswith(("var", "std")):
        keep = bool(op.attrs.get("kwargs", {}).get("keepdim", False))
    else:
        keep = bool(arg(op, 2, "keepdim", False))
    want, out_pl = {}, {}
    for axis in cx.axes:
        p = cx.on(x, axis)
        if p.is_shard and p.dim not in dims:
            want[axis] = p
            out_pl[axis] = p if keep else shard(p.dim - sum(1 for d in dims if d < p.dim))
        else:
            want[axis] = out_pl[axis] = REPLICATE
    cx.emit_compute(op, {x: with_axes(cx, x, want)}, [(op.outputs[0], build(cx, out_pl))])


# -- batched matmul (eager attention: scores and values) ------------------------------------


@rule("matmul", "bmm")
def matmul(cx: BlockLowering, op: Op) -> None:
    """`a @ b` with a [..., n, k] and b [..., k, m] (leading dims broadcast), as eager
    attention computes scores (q @ k^T) and outputs (p @ v): a shard on a leading dim both
    operands really have (batch, heads) passes through; a shard of a's rows (n) or of b's
    columns (m) passes through with the other operand whole; a shard of the contracted dim
    k on both makes the result Partial. Anything else is gathered first."""
    a, b = arg(op, 0, "self").name, arg(op, 1, "other" if op.target == "matmul" else "mat2").name
    out = op.outputs[0]
    ra, rb, ro = cx.rank(a), cx.rank(b), cx.rank(out)
    if ra < 2 or rb < 2:
        unknown_op(cx, op)
        return
    out_shape = cx.spec(out).shape
    want_a, want_b, out_pl = {}, {}, {}
    for axis in cx.axes:
        pa, pb = cx.on(a, axis), cx.on(b, axis)
        da = pa.dim + ro - ra if pa.is_shard else None  # a's shard as an output dim
        db = pb.dim + ro - rb if pb.is_shard else None
        choice = (REPLICATE, REPLICATE, REPLICATE)
        if pa.is_shard and pa.dim < ra - 2 and covers(cx, a, out_shape, da) is not None:
            other = covers(cx, b, out_shape, da)
            choice = (pa, shard(other) if other is not None else REPLICATE, shard(da))
        elif pb.is_shard and pb.dim < rb - 2 and covers(cx, b, out_shape, db) is not None:
            other = covers(cx, a, out_shape, db)
            choice = (shard(other) if other is not None else REPLICATE, pb, shard(db))
        elif pa.is_shard and pa.dim == ra - 1 and pb.is_shard and pb.dim == rb - 2:
            choice = (pa, pb, PARTIAL)
        elif pa.is_shard and pa.dim == ra - 2:
            choice = (pa, REPLICATE, shard(ro - 2))
        elif pb.is_shard and pb.dim == rb - 1:
            choice = (REPLICATE, pb, shard(ro - 1))
        want_a[axis], want_b[axis], out_pl[axis] = choice
    cx.emit_compute(op, {a: with_axes(cx, a, want_a), b: with_axes(cx, b, want_b)},
                    [(out, build(cx, out_pl))])


# -- attention ----------------------------------------------------------------------------


@rule("scaled_dot_product_attention")
def sdpa(cx: BlockLowering, op: Op) -> None:
    q, k, v = (arg(op, i, n).name for i, n in enumerate(("query", "key", "value")))
    mask_ref = arg(op, 3, "attn_mask")
    mask = mask_ref.name if isinstance(mask_ref, ValueRef) else None
    out = op.outputs[0]
    out_shape = cx.spec(out).shape
    want = {q: {}, k: {}, v: {}}
    if mask:
        want[mask] = {}
    out_pl = {}
    q_shape, k_shape = cx.spec(q).shape, cx.spec(k).shape
    for axis in cx.axes:
        pq, pk = cx.on(q, axis), cx.on(k, axis)
        split = pq if pq.is_shard and pq.dim in (0, 1) else REPLICATE
        if not pq.is_shard and pk.is_shard and pk.dim in (0, 1) and same(q_shape[pk.dim], k_shape[pk.dim]):
            # Keys (e.g. a head-split KV cache) already split by batch or heads while the
            # queries are whole (a fused QKV gathered before the heads split): slice the
            # queries (free) rather than gather the keys and values.
            split = pk
        want[q][axis] = want[k][axis] = want[v][axis] = split
        out_pl[axis] = split
        if mask:
            d = covers(cx, mask, out_shape, split.dim) if split.is_shard else None
            want[mask][axis] = shard(d) if d is not None else REPLICATE
    cx.emit_compute(op, {t: with_axes(cx, t, want[t]) for t in want}, [(out, build(cx, out_pl))])


# -- routing: ops along one dim (top-k, gather/scatter, *_like) ------------------------------

# target -> (argument index of the dim the op works along, its name); None: no such dim
ALONG_DIM: dict[str, tuple[int, str] | None] = {
    "topk": (2, "dim"),
    "sort": (1, "dim"),
    "argsort": (1, "dim"),
    "gather": (1, "dim"),
    "scatter.src": (1, "dim"),
    "scatter.value": (1, "dim"),
    "scatter_.value": (1, "dim"),
    "scatter_.src": (1, "dim"),
    "zeros_like": None,
    "ones_like": None,
    "empty_like": None,
    "full_like": None,
}


@rule(*ALONG_DIM)
def along_dim(cx: BlockLowering, op: Op) -> None:
    """Ops whose tensor operands and results share one shape and work along one dim: a shard
    on any other dim passes through (the same shard on every operand); a shard on the op's
    dim, or a Partial, is made Replicate first."""
    values = operands(op, cx)
    first = values[0]
    rank = cx.rank(first)
    where = ALONG_DIM[op.target]
    dim = None
    if where is not None:
        default = -1 if op.target in ("topk", "sort", "argsort") else None
        dim = norm_dim(arg(op, where[0], where[1], default), rank)
    want = {}
    for axis in cx.axes:
        p = cx.on(first, axis)
        ok = p.is_shard and p.dim != dim and all(
            cx.rank(v) == rank and same(cx.spec(v).shape[p.dim], cx.spec(first).shape[p.dim])
            for v in values
        )
        want[axis] = p if ok else REPLICATE
    outputs = [(o, build(cx, want)) for o in op.outputs if o in cx.graph.values]
    cx.emit_compute(op, {v: with_axes(cx, v, want) for v in values}, outputs)
