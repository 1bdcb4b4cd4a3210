"""Layout rules for views and data movement: view/reshape/flatten/unsqueeze/squeeze (the
shard follows the outermost dim of a merged or split group), expand, transpose/permute,
slice/select, chunk/split/unbind and cat/stack. Registered into `passes.lower.rules.RULES`.
A sectioned shard (a fused projection's output, passes/lower/fused.py) keeps its sections
through a view that leaves its dim whole, and a slice or split along them runs locally.
"""

from __future__ import annotations

import math

from ir.graph import Op, ValueRef
from ir.layout import REPLICATE, shard
from ir.polynomial import Polynomial, as_polynomial, exact_quotient
from passes.lower.builder import same
from passes.lower.lower import BlockLowering
from passes.lower.rules import INT64_MAX, arg, build, covers, norm_dim, rule, unify, with_axes

# -- views and movement -------------------------------------------------------------------


def dim_groups(src: tuple, dst: tuple) -> list[tuple[list[int], list[int]]]:
    """Pair runs of dims of `src` and `dst` whose sizes multiply to the same value (how a
    view splits or merges dims). Size-1 dims form groups of their own."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        if i < len(src) and src[i] == 1:
            groups.append(([i], []))
            i += 1
            continue
        if j < len(dst) and dst[j] == 1:
            groups.append(([], [j]))
            j += 1
            continue
        if i >= len(src) or j >= len(dst):
            raise ValueError(f"view {src} -> {dst} does not preserve the element count")
        gi, gj = [i], [j]
        ps, pd = as_polynomial(src[i]), as_polynomial(dst[j])
        i, j = i + 1, j + 1
        while ps != pd:
            if _covers_more(ps, pd) and j < len(dst):
                pd *= dst[j]
                gj.append(j)
                j += 1
            elif i < len(src):
                ps *= src[i]
                gi.append(i)
                i += 1
            else:
                raise ValueError(f"view {src} -> {dst}: cannot match dims")
        groups.append((gi, gj))
    return groups


def _covers_more(ps: Polynomial, pd: Polynomial) -> bool:
    """Whether the source run `ps` is a whole multiple of the destination run `pd` (so the
    destination takes in its next dim): `ps / pd` is a number above 1, or a polynomial with
    integer coefficients (`B*T / B`), not a fraction (`T/2`, `B/T`)."""
    ratio = exact_quotient(ps, pd)
    if ratio is None:
        return False
    return ratio > 1 if ratio.is_number else ratio.has_integer_coefficients()


def _shard_count(cx: BlockLowering, value: str, dim: int) -> int:
    return math.prod(cx.sizes[a] for a in cx.layout(value).axes_sharding(dim))


@rule("view", "_unsafe_view", "reshape", "flatten.using_ints", "unsqueeze", "squeeze.dim",
      "squeeze.dims", "squeeze")
def view_like(cx: BlockLowering, op: Op) -> None:
    x = arg(op, 0, "self").name
    out = op.outputs[0]
    src, dst = cx.spec(x).shape, cx.spec(out).shape
    try:
        groups = dim_groups(src, dst)
    except ValueError as err:
        raise cx.fail(op, str(err)) from None
    want, out_pl = {}, {}
    for axis in cx.axes:
        p = cx.on(x, axis)
        want[axis], out_pl[axis] = p, p
        if not p.is_shard:
            continue
        ins, outs = next(((gi, gj) for gi, gj in groups if p.dim in gi), ([], []))
        target = None
        if outs and ins[0] == p.dim:
            first = as_polynomial(dst[outs[0]]).as_int()
            n = _shard_count(cx, x, p.dim)
            if len(ins) == 1 or len(outs) == 1:
                if first is None or first % n == 0:
                    target = outs[0]
            if p.sections and (len(ins) != 1 or len(outs) != 1):
                target = None  # sections only survive a view that keeps their dim whole
        if target is None:
            want[axis] = out_pl[axis] = REPLICATE
        else:
            out_pl[axis] = p.moved(target)
    out_layout = build(cx, out_pl)
    args = None
    if op.target in ("view", "_unsafe_view", "reshape"):
        args = [ValueRef(x), list(cx.local_shape_of(out, out_layout))]
    cx.emit_compute(op, {x: with_axes(cx, x, want)}, [(out, out_layout)], args=args)


def _expanded(cx: BlockLowering, x: str, out: str, *, keep_partial: bool):
    """Placements for broadcasting `x` to `out`: a shard on a real (non-broadcast) dim is
    carried to the matching output dim, a Partial kept when `keep_partial`, anything else
    gathered. Returns (x's wanted placements, the output's layout)."""
    offset = cx.rank(out) - cx.rank(x)
    want, out_pl = {}, {}
    for axis in cx.axes:
        p = cx.on(x, axis)
        if p.is_shard and covers(cx, x, cx.spec(out).shape, p.dim + offset) is not None:
            want[axis], out_pl[axis] = p, shard(p.dim + offset)
        elif p.is_partial and keep_partial:
            want[axis], out_pl[axis] = p, p
        else:
            want[axis] = out_pl[axis] = REPLICATE
    return want, build(cx, out_pl)


@rule("expand")
def expand(cx: BlockLowering, op: Op) -> None:
    x = arg(op, 0, "self").name
    out = op.outputs[0]
    want, out_layout = _expanded(cx, x, out, keep_partial=True)
    local = cx.local_shape_of(out, out_layout)
    sizes = list(arg(op, 1, "size"))
    sizes = [-1 if s == -1 else local[i] for i, s in enumerate(sizes)]
    cx.emit_compute(op, {x: with_axes(cx, x, want)}, [(out, out_layout)], args=[ValueRef(x), sizes])


@rule("expand_as")
def expand_as(cx: BlockLowering, op: Op) -> None:
    """`x.expand_as(other)`: other gives only the shape, so it is emitted as `expand` to the
    local shape of the result (x's shard carried over like `expand`)."""
    x = arg(op, 0, "self").name
    out = op.outputs[0]
    want, out_layout = _expanded(cx, x, out, keep_partial=False)
    sizes = list(cx.local_shape_of(out, out_layout))
    cx.emit_compute(op, {x: with_axes(cx, x, want)}, [(out, out_layout)], target="expand",
                    args=[ValueRef(x), sizes], kwargs={})


def _permuted(cx: BlockLowering, op: Op, perm: list[int]) -> None:
    """Output dim i is input dim perm[i]."""
    x = arg(op, 0, "self").name
    want, out_pl = {}, {}
    for axis in cx.axes:
        p = cx.on(x, axis)
        want[axis] = p
        out_pl[axis] = shard(perm.index(p.dim)) if p.is_shard else p
    cx.emit_compute(op, {x: with_axes(cx, x, want)}, [(op.outputs[0], build(cx, out_pl))])


@rule("transpose.int")
def transpose(cx: BlockLowering, op: Op) -> None:
    rank = cx.rank(arg(op, 0, "self").name)
    a, b = norm_dim(arg(op, 1, "dim0"), rank), norm_dim(arg(op, 2, "dim1"), rank)
    perm = list(range(rank))
    perm[a], perm[b] = perm[b], perm[a]
    _permuted(cx, op, perm)


@rule("permute")
def permute(cx: BlockLowering, op: Op) -> None:
    rank = cx.rank(arg(op, 0, "self").name)
    _permuted(cx, op, [norm_dim(d, rank) for d in arg(op, 1, "dims")])


@rule("t")
def t(cx: BlockLowering, op: Op) -> None:
    rank = cx.rank(arg(op, 0, "self").name)
    _permuted(cx, op, list(range(rank))[::-1])


def _full_slice(cx: BlockLowering, x: str, dim: int, start, end, step) -> bool:
    size = cx.spec(x).shape[dim]
    full_end = end is None or (isinstance(end, int) and end >= INT64_MAX // 2) or same(end, size)
    return start in (None, 0) and full_end and step in (None, 1)


@rule("slice.Tensor")
def slice_(cx: BlockLowering, op: Op) -> None:
    x = arg(op, 0, "self").name
    rank = cx.rank(x)
    dim = norm_dim(arg(op, 1, "dim", 0), rank)
    full = _full_slice(cx, x, dim, arg(op, 2, "start"), arg(op, 3, "end"), arg(op, 4, "step", 1))
    if _cuts_sections(cx, op, x, dim):
        return
    want = {}
    for axis in cx.axes:
        p = cx.on(x, axis)
        want[axis] = REPLICATE if (p.is_shard and p.dim == dim and not full) else p
    cx.emit_compute(op, {x: with_axes(cx, x, want)}, [(op.outputs[0], build(cx, want))])


def _cuts_sections(cx: BlockLowering, op: Op, x: str, dim: int) -> bool:
    """A slice or split of a sectioned shard (a fused projection's output) along its
    sections, emitted as this rank's local cut: each piece is its section's ordinary shard
    (passes/lower/fused.py). False (nothing emitted) when `x` is not sectioned on `dim`."""
    from passes.lower.fused import cut_pieces, local_cut

    placed = {a: cx.on(x, a) for a in cx.axes}
    sectioned = [a for a, p in placed.items() if p.is_shard and p.dim == dim and p.sections]
    if not sectioned:
        return False
    sections = placed[sectioned[0]].sections
    bounds = [sum(sections[:i]) for i in range(len(sections) + 1)]
    whole = set(zip(bounds, bounds[1:], strict=False))
    pieces = cut_pieces(cx, op, dim)
    if pieces is None or any(piece not in whole for piece in pieces):
        raise cx.fail(op, f"cuts a fused projection's output across its sections {sections}")
    out_pl = {a: (shard(dim) if a in sectioned else p) for a, p in placed.items()}
    target, args = local_cut(cx, op, sections, _shard_count(cx, x, dim))
    cx.emit_compute(op, {x: cx.layout(x)}, [(v, build(cx, out_pl)) for v in op.outputs],
                    target=target, args=args, kwargs={})
    return True


@rule("select.int")
def select(cx: BlockLowering, op: Op) -> None:
    x = arg(op, 0, "self").name
    dim = norm_dim(arg(op, 1, "dim"), cx.rank(x))
    want, out_pl = {}, {}
    for axis in cx.axes:
        p = cx.on(x, axis)
        if p.is_shard and p.dim == dim:
            p = REPLICATE
        want[axis] = p
        out_pl[axis] = shard(p.dim - (p.dim > dim)) if p.is_shard else p
    cx.emit_compute(op, {x: with_axes(cx, x, want)}, [(op.outputs[0], build(cx, out_pl))])


@rule("chunk", "split.Tensor", "split_with_sizes", "unbind.int")
def split(cx: BlockLowering, op: Op) -> None:
    x = arg(op, 0, "self").name
    rank = cx.rank(x)
    dim = norm_dim(arg(op, 1, "dim", 0) if op.target == "unbind.int" else arg(op, 2, "dim", 0), rank)
    drops = op.target == "unbind.int"
    if not drops and _cuts_sections(cx, op, x, dim):
        return
    want, out_pl = {}, {}
    for axis in cx.axes:
        p = cx.on(x, axis)
        if p.is_shard and p.dim == dim:
            p = REPLICATE
        want[axis] = p
        out_pl[axis] = shard(p.dim - (drops and p.dim > dim)) if p.is_shard else p
    cx.emit_compute(op, {x: with_axes(cx, x, want)}, [(v, build(cx, out_pl)) for v in op.outputs])


@rule("cat", "stack")
def cat(cx: BlockLowering, op: Op) -> None:
    tensors = [t.name for t in arg(op, 0, "tensors")]
    out = op.outputs[0]
    out_shape = cx.spec(out).shape
    dim = norm_dim(arg(op, 1, "dim", 0), len(out_shape))
    values = list(dict.fromkeys(tensors))
    want = {v: {} for v in values}
    out_pl = {}
    for axis in cx.axes:
        if op.target == "stack":
            shifted = {}
            for v in values:
                p = cx.on(v, axis)
                shifted[v] = shard(p.dim + (p.dim >= dim)) if p.is_shard else p
            first = next((p for p in shifted.values() if p.is_shard), None)
            common = first if first is not None else REPLICATE
            for v in values:
                want[v][axis] = shard(common.dim - (common.dim > dim)) if common.is_shard else REPLICATE
            out_pl[axis] = common
            continue
        placed, result = unify(
            cx, values, out_shape, axis, partial_ok=True, blocked_dims=frozenset({dim})
        )
        if result.is_replicate:
            placed = {v: REPLICATE for v in values}
        if result.is_shard:
            placed = {v: shard(result.dim - len(out_shape) + cx.rank(v)) for v in values}
        for v in values:
            want[v][axis] = placed[v]
        out_pl[axis] = result
    cx.emit_compute(op, {v: with_axes(cx, v, want[v]) for v in values}, [(out, build(cx, out_pl))])
