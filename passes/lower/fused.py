"""Fused projections split by sections (Megatron's head split of a fused QKV or gate|up).

A fused projection (GPT-2's `c_attn` = [Q|K|V] columns, Phi-3's `qkv_proj` and
`gate_up_proj`) is one column-parallel linear whose output the model then cuts into
sections along its last dim (`split`, `chunk`, or slices). Splitting its columns
contiguously puts Q on some ranks and V on others, so the output has to be gathered before
the cut. Instead each section is split over the ranks: rank i holds the i-th piece of every
section (its Q heads, its KV heads' K and V, its slice of gate and of up), the weight and
bias shards are those pieces side by side, and the model's cut runs locally with the local
section sizes, giving each section as an ordinary shard. That is the layout the planner
prices for tp (no gather); a fused output cut any other way keeps the contiguous split.

The layout is a sectioned shard (`ir.layout.Placement.sections`); the op rules carry it
through the views between the projection and the cut (GPT-2's addmm is 2-D, then viewed to
[B, T, 3H]) and lower the cut with `local_cut`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ir.graph import Op
from ir.polynomial import as_polynomial
from passes.lower.builder import same
from passes.lower.rules import INT64_MAX, POINTWISE, arg, norm_dim

if TYPE_CHECKING:
    from passes.lower.lower import BlockLowering

VIEWS = frozenset({"view", "_unsafe_view", "reshape"})
CUTS = frozenset({"split.Tensor", "split_with_sizes", "chunk", "slice.Tensor"})


def fused_sections(cx: BlockLowering, value: str, dim: int, parts: int) -> tuple[int, ...]:
    """The sections of `value` (a projection's output) along `dim` when every use of it cuts
    it there into whole sections that each split `parts` ways — through views that keep
    `dim` whole and single-input pointwise ops — else () (keep the contiguous split).
    Sections are the intervals between the cuts' boundaries; a piece spanning two of them,
    an unused remainder, or any other use disqualifies."""
    size = as_polynomial(cx.spec(value).shape[dim]).as_int()
    pieces: list[tuple[int, int]] = []
    if size is None or not _collect(cx, value, dim, pieces):
        return ()
    cuts = sorted({0, size, *(p for piece in pieces for p in piece)})
    if any(start not in cuts or end not in cuts or _inside(cuts, start, end) for start, end in pieces):
        return ()
    if {(a, b) for a, b in pieces} != set(zip(cuts, cuts[1:], strict=False)):
        return ()
    sections = tuple(b - a for a, b in zip(cuts, cuts[1:], strict=False))
    if len(sections) < 2 or any(s % parts for s in sections):
        return ()
    return sections


def _inside(cuts: list[int], start: int, end: int) -> bool:
    return any(start < c < end for c in cuts)


def _collect(cx: BlockLowering, value: str, dim: int, pieces: list[tuple[int, int]]) -> bool:
    """Append the [start, end) pieces every use of `value` cuts along `dim`; False when a
    use is anything else (or the value leaves the block)."""
    later = cx.b.consumer_blocks.get(value, set()) - {cx.block.name}
    uses = cx.consumers.get(value, [])
    if later or value in cx.graph.outputs or not uses:
        return False
    for op in uses:
        if op.target in CUTS:
            got = cut_pieces(cx, op, dim)
            if got is None:
                return False
            pieces.extend(got)
        elif op.target in VIEWS or (op.target in POINTWISE and op.inputs == (value,)):
            out = op.outputs[0]
            moved = _kept_dim(cx, value, out, dim)
            if moved is None or not _collect(cx, out, moved, pieces):
                return False
        else:
            return False
    return True


def _kept_dim(cx: BlockLowering, src: str, dst: str, dim: int) -> int | None:
    """The dim of `dst` that is `dim` of `src`, untouched by the view between them (same
    size, and every dim before it keeps the same total size); None if it is merged or split."""
    s_shape, d_shape = cx.spec(src).shape, cx.spec(dst).shape
    if len(s_shape) == len(d_shape) and all(same(a, b) for a, b in zip(s_shape, d_shape, strict=True)):
        return dim
    # the dims after `dim` must match one for one (the cut dim is last in every fused
    # projection seen), and those before it hold the same number of elements
    tail = len(s_shape) - dim
    if len(d_shape) < tail:
        return None
    if not all(same(a, b) for a, b in zip(s_shape[dim:], d_shape[len(d_shape) - tail :], strict=True)):
        return None
    return len(d_shape) - tail


def cut_pieces(cx: BlockLowering, op: Op, dim: int) -> list[tuple[int, int]] | None:
    """The global [start, end) along `dim` of each result of a cut op, or None when the op
    cuts another dim (or not by constant sizes)."""
    x = arg(op, 0, "self").name
    rank = cx.rank(x)
    if op.target == "slice.Tensor":
        if norm_dim(arg(op, 1, "dim", 0), rank) != dim or arg(op, 4, "step", 1) not in (None, 1):
            return None
        size = int(cx.spec(x).shape[dim])
        start, end = arg(op, 2, "start"), arg(op, 3, "end")
        start = 0 if start is None else start
        end = size if end is None or (isinstance(end, int) and end >= INT64_MAX // 2) else end
        if not (isinstance(start, int) and isinstance(end, int)):
            return None
        start, end = (start + size if start < 0 else start), (end + size if end < 0 else end)
        return [(max(0, start), min(size, end))]
    if norm_dim(arg(op, 2, "dim", 0), rank) != dim:
        return None
    pieces, start = [], 0
    for out in op.outputs:
        width = as_polynomial(cx.spec(out).shape[dim]).as_int()
        if width is None:
            return None
        pieces.append((start, start + width))
        start += width
    return pieces


def local_cut(cx: BlockLowering, op: Op, sections: tuple[int, ...], parts: int) -> tuple[str, list]:
    """The cut `op` of a value sectioned `sections` (each split `parts` ways) as this rank
    runs it: (target, args) — a split into the local section sizes, or the local slice."""
    x = arg(op, 0, "self")
    rank = cx.rank(x.name)
    if op.target == "slice.Tensor":
        dim = norm_dim(arg(op, 1, "dim", 0), rank)
        ((start, end),) = cut_pieces(cx, op, dim)
        return "slice.Tensor", [x, dim, start // parts, end // parts]
    dim = norm_dim(arg(op, 2, "dim", 0), rank)
    widths = [b - a for a, b in cut_pieces(cx, op, dim)]
    return "split.Tensor", [x, [w // parts for w in widths], dim]
