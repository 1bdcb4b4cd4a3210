"""Helix attention: the distributed kernel that replaces a decode attention block's SDPA.

Layouts (N = KVP × TPA ranks; `kvp` and `tp` mesh axes):
* Q/K/V projections, RoPE: lowered by the ordinary op rules with the projections
  column-parallel over tp only — every kvp rank computes its TPA head slice of Q/K/V for
  the whole batch (tp=Shard(heads), kvp=Replicate).
* KV cache [B, K, L, d]: KV heads over tp, the sequence over kvp, round-robin in blocks of
  `append_block` tokens (plan extras, default 16): global slot g is on kvp rank
  (g // append_block) % KVP at local slot (g // (append_block·KVP))·append_block + g %
  append_block, so ranks hold uneven lengths. The layout says kvp=Shard(L) (the local
  length is L/KVP); the runner writes each new token only on the rank owning its slot.
* SDPA → per HOP-B batch slice: `helix_partial_attention` (this rank's KV slice; the step's
  new tokens are attended on kvp rank 0 only, so each key counts once; a rank with no valid
  key gives out 0 and log-sum-exp −inf, never NaN), an async all-to-all over kvp that
  regroups the partials by head (each rank keeps Q/N heads of all KVP partials), and the
  exact `helix_combine` by log-sum-exp rescaling. Slice i's all-to-all is issued before slice
  i+1's attention and waited after it (passes/lower/schedule.py keeps that order).
* The output: heads split tp-major (tp outer, kvp inner: rank (i, j) holds head block
  j·KVP + i), so the output projection is row-parallel over all N ranks with its weight
  columns split tp-major too, and the all-reduce runs over the joined kvp×tp group.

Prefill of the prompt (decode programs) runs this same kernel: the prompt's tokens are new
tokens, attended on kvp rank 0, and their K/V is then distributed by the append rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from ir.graph import Op, ValueRef
from ir.layout import REPLICATE, Layout, LoweringError, shard
from ir.polynomial import constant
from ir.rank_program import AxisRank, Collective, Compute, Wait
from ir.tensor import WORKLOAD_SYMBOLS, TensorSpec
from passes.lower.builder import Builder, dim_of
from passes.parallelize.strategies.helix import DEFAULT_APPEND_BLOCK

# Ops between the KV concat and SDPA that only repeat KV heads for GQA (absorbed: the kernel
# groups query heads over KV heads itself).
_REPEAT_OPS = frozenset(
    {"flatten.using_ints", "expand", "unsqueeze", "slice.Tensor", "clone", "contiguous", "alias"}
)


def append_block(extras: dict) -> int:
    value = int(extras.get("append_block", DEFAULT_APPEND_BLOCK))
    if value < 1:
        raise LoweringError(f"helix append_block must be >= 1 (plan extras say {value})")
    return value


def _helix_consumer(builder: Builder, cache: str):
    for name in sorted(builder.consumer_blocks.get(cache, ())):
        bp = builder.block_plans[name]
        if bp.strategy == "helix":
            return bp
    return None


def helix_kvp_block(builder: Builder, cache: str) -> int:
    """The append block of a cache read by a Helix block; 0 for any other cache."""
    bp = _helix_consumer(builder, cache)
    return append_block(bp.extras) if bp is not None else 0


def helix_cache_layout(builder: Builder, cache: str, layout: Layout) -> Layout:
    spec = builder.graph.values[cache]
    if "kvp" not in builder.axes:
        raise LoweringError(
            f"cache {cache!r} is read by a helix block, but the plan's mesh {builder.mesh} has no "
            "kvp axis of size > 1; helix needs kvp >= 2"
        )
    length_dim = dim_of(spec.shape, WORKLOAD_SYMBOLS["L"])
    if length_dim is None:
        raise LoweringError(f"cache {cache!r} {spec} has no L dim to split over kvp")
    return layout.with_axis("kvp", shard(length_dim))


@dataclass(frozen=True)
class _Pattern:
    sdpa: Op
    q: str
    k_new: str
    v_new: str
    k_cache: str
    v_cache: str
    mask: str
    absorbed: frozenset[str]


def _merges_head_repeats(cx, op: Op, producer: dict[str, Op]) -> bool:
    """A reshape [B, K, groups, L, d] -> [B, K·groups, L, d] of an expanded tensor: the GQA
    repeat written as expand + reshape (Hugging Face `repeat_kv`) rather than expand +
    flatten. A reshape of the same shapes over anything else is not a repeat."""
    if op.target not in ("reshape", "view", "_unsafe_view") or not op.inputs:
        return False
    source = producer.get(op.inputs[0])
    if source is None or source.target != "expand":
        return False
    before, after = cx.spec(op.inputs[0]).shape, cx.spec(op.outputs[0]).shape
    return (len(before) == 5 and len(after) == 4 and before[0] == after[0]
            and tuple(before[3:]) == tuple(after[2:]) and before[1] * before[2] == after[1])


def kv_source(cx, value: str, absorbed: set[str], who: str, *, cache_optional: bool = False) -> tuple[str | None, str]:
    """Walk from an SDPA key/value input back through the GQA repeats (expand + flatten, or
    expand + reshape as Hugging Face's `repeat_kv` writes it) to `cat([cache, new], L)`:
    (the cache, the new tokens' K/V), the walked ops added to `absorbed`. With
    `cache_optional` (ring attention over a prompt without a cache) a path that meets no
    concat gives (None, where the repeats start); otherwise it is an error naming the op."""
    producer = {o: op for op in cx.ops for o in op.outputs}
    walked: set[str] = set()
    while True:
        op = producer.get(value)
        if op is not None and (op.target in _REPEAT_OPS or _merges_head_repeats(cx, op, producer)):
            walked.add(op.name)
            value = op.inputs[0]
            continue
        if op is not None and op.target == "cat" and len(op.inputs) == 2 and op.inputs[0].startswith("past_kv"):
            absorbed |= walked | {op.name}
            return op.inputs[0], op.inputs[1]
        if cache_optional and (op is None or op.target != "cat"):
            absorbed |= walked
            return None, value
        if op is None:
            raise LoweringError(f"{who}: {value!r} does not come from a KV-cache concat in this block")
        raise LoweringError(
            f"{who}: the KV path into attention meets {op.name} ({op.target}); expected "
            "cat([past_kv, new], L) followed only by head repeats"
        )


def match_sdpa(cx, who: str, mask_role: str):
    """The block's single SDPA, its argument getter and its boolean mask, for a strategy
    (`who`) that replaces SDPA with a distributed kernel; `mask_role` says what the kernel
    reads from the mask. Raises a LoweringError naming what does not fit."""
    sdpas = [op for op in cx.ops if op.target == "scaled_dot_product_attention"]
    if len(sdpas) != 1:
        raise LoweringError(
            f"block {cx.block.name!r}: {who} needs exactly one scaled_dot_product_attention "
            f"(found {len(sdpas)})"
        )
    sdpa = sdpas[0]
    args, kwargs = sdpa.attrs.get("args", ()), sdpa.attrs.get("kwargs", {})

    def arg(i: int, name: str):
        return args[i] if i < len(args) else kwargs.get(name)

    mask = arg(3, "attn_mask")
    if not isinstance(mask, ValueRef) or cx.spec(mask.name).dtype != "bool":
        raise LoweringError(
            f"block {cx.block.name!r}: {who} needs a boolean attention mask on SDPA ({mask_role})"
        )
    if arg(5, "is_causal") or (arg(4, "dropout_p") or 0.0) != 0.0:
        raise LoweringError(f"block {cx.block.name!r}: {who} does not lower is_causal or dropout")
    return sdpa, arg, mask


def _match(cx) -> _Pattern:
    sdpa, arg, mask = match_sdpa(cx, "helix", "it marks each sequence's valid cache slots")
    absorbed: set[str] = set()
    k_cache, k_new = kv_source(cx, arg(1, "key").name, absorbed, "helix")
    v_cache, v_new = kv_source(cx, arg(2, "value").name, absorbed, "helix")
    return _Pattern(sdpa, arg(0, "query").name, k_new, v_new, k_cache, v_cache, mask.name, frozenset(absorbed))


def lower_helix_attention(cx) -> None:
    """Lower a Helix attention block: ordinary op rules, with the KV concat, the GQA repeats
    and SDPA replaced by the Helix kernel steps."""

    pattern = _match(cx)
    cx.lower_ops_replacing(pattern.sdpa, lambda: _emit_kernel(cx, pattern), pattern.absorbed)


def _emit_kernel(cx, pt: _Pattern) -> None:
    b = cx.b
    has_tp = "tp" in cx.axes
    heads_split = {"kvp": REPLICATE, **({"tp": shard(1)} if has_tp else {})}
    q = cx.require(pt.q, _with(cx, pt.q, heads_split))
    k_new = cx.require(pt.k_new, _with(cx, pt.k_new, heads_split))
    v_new = cx.require(pt.v_new, _with(cx, pt.v_new, heads_split))
    mask = cx.require(pt.mask, _with(cx, pt.mask, {"kvp": REPLICATE, **({"tp": REPLICATE} if has_tp else {})}))
    k_cache, v_cache = cx.local(pt.k_cache), cx.local(pt.v_cache)
    q_layout = b.layout(q)
    dp = {"dp": q_layout.on("dp")} if "dp" in cx.axes else {}

    q_spec, v_spec = cx.spec(pt.q), cx.spec(pt.v_new)
    batch, heads, tokens = q_spec.shape[0], q_spec.shape[1], q_spec.shape[2]
    value_dim = v_spec.shape[-1]
    hopb = int(cx.plan.extras.get("hopb", 1))
    kvp_block = append_block(cx.plan.extras)
    local_batch = cx.local_shape_of(pt.q, q_layout)[0]
    slice_global = batch / hopb
    slice_local = local_batch / hopb
    scale = pt.sdpa.attrs.get("kwargs", {}).get("scale")
    kvp = b.sizes["kvp"]
    heads_out = {"tp": shard(1), "kvp": shard(1)} if has_tp else {"kvp": shard(1)}

    outs: list[str] = []
    for s in range(hopb):
        tag = f"{pt.sdpa.name}.helix{s}"
        # [KVP, b, Q, T, d+1] float32: this rank's partial out + log-sum-exp (kvp=Shard(0))
        part_spec = TensorSpec((constant(kvp), slice_global, heads, tokens, value_dim + 1), "float32")
        cx.extra_specs[f"{tag}.part"] = part_spec
        part = cx.define(
            f"{tag}.part",
            _build(cx, {**_shift(dp, 1), "kvp": shard(0), **({"tp": shard(2)} if has_tp else {})}),
            f"partial{s}" if hopb > 1 else "partial",
        )
        cx.steps.append(
            Compute(
                target="helix_partial_attention",
                args=(
                    ValueRef(q), ValueRef(k_cache), ValueRef(v_cache), ValueRef(k_new),
                    ValueRef(v_new), ValueRef(mask), AxisRank("kvp"), s * slice_local, slice_local,
                ),
                kwargs={"kvp_block": kvp_block, "scale": scale},
                outputs=(part,),
                source_op=pt.sdpa.name,
            )
        )
        # all-to-all over kvp: send head chunk i to kvp rank i, receive every rank's partials
        parts_layout = _build(cx, {**_shift(dp, 1), **{a: shard(2) for a in heads_out}})
        cx.extra_specs[f"{tag}.parts"] = part_spec
        parts = b.new_value(f"{tag}.parts", part_spec, parts_layout, f"parts{s}" if hopb > 1 else "parts")
        handle = f"work_{parts}"
        cx.steps.append(
            Collective(kind="all_to_all", axis="kvp", input=part, output=parts, handle=handle, src_dim=0, dst_dim=2)
        )
        cx.steps.append(Wait(handle=handle, output=parts))
        out_layout = _build(cx, {**dp, **heads_out})
        if hopb == 1:
            out = cx.define(pt.sdpa.outputs[0], out_layout, "attn")
        else:
            cx.extra_specs[f"{tag}.out"] = TensorSpec((slice_global, heads, tokens, value_dim), q_spec.dtype)
            out = cx.define(f"{tag}.out", out_layout, f"attn{s}")
        cx.steps.append(
            Compute(target="helix_combine", args=(ValueRef(parts), ValueRef(q)), kwargs={}, outputs=(out,),
                    source_op=pt.sdpa.name)
        )
        outs.append(out)
    if hopb > 1:
        out = cx.define(pt.sdpa.outputs[0], _build(cx, {**dp, **heads_out}), "attn")
        cx.steps.append(
            Compute(target="cat", args=([ValueRef(o) for o in outs], 0), kwargs={}, outputs=(out,),
                    source_op=pt.sdpa.name)
        )


def _with(cx, value: str, per_axis: dict) -> Layout:
    layout = cx.layout(value)
    for axis, p in per_axis.items():
        if axis in cx.axes:
            layout = layout.with_axis(axis, p)
    return layout


def _build(cx, per_axis: dict) -> Layout:
    """A layout over the block's axes (tp before kvp: head splits nest tp-major)."""
    layout = Layout.replicated(cx.axes)
    for axis, p in per_axis.items():
        if axis in cx.axes:
            layout = layout.with_axis(axis, p)
    return layout


def _shift(per_axis: dict, by: int) -> dict:
    return {a: shard(p.dim + by) if p.is_shard else p for a, p in per_axis.items()}
