"""Latent (MLA) attention in the absorbed form: the kernel that replaces the expanded-KV SDPA.

The model (examples/deepseek.py, like transformers) expands the latent cache with
`kv_b_proj` into per-head keys and values and calls SDPA. On a GPU that materializes
B·heads·L·(d_k + d_v) elements (out of memory beyond a few thousand tokens for DeepSeek-V3
shapes); the absorbed form never expands: with W_UK, W_UV the key and value halves of
`kv_b_proj` (per head [nope, r] and [v, r], r = kv_lora_rank),

    q_lat  = q_nope · W_UK                    [B, h, T, r]
    scores = (q_lat · c_kvᵀ + q_pe · k_peᵀ) · scale   (c_kv, k_pe: the latent cache)
    out    = softmax(scores) · c_kv · W_UVᵀ   [B, h, T, v]

— two matmuls over the latent cache, exact up to rounding. The lowering matches SDPA whose
value comes from `kv_b_proj` applied to the latent part of `cat([past_kv, new_latent], L)`,
and replaces SDPA and the expansion ops with `mla_attention(q, latent, kv_b_weight, mask)`.
Layouts: heads split (tp: q and kv_b's rows split alike, the latent whole) or batch split
(dp: q, latent and mask split alike); the output keeps q's split.
"""

from __future__ import annotations

from dataclasses import dataclass

from ir.graph import Op, ValueRef
from ir.layout import REPLICATE, LoweringError, shard
from ir.rank_program import Compute
from passes.lower.builder import B_SYM, same
from passes.lower.moe import _dead_after


@dataclass(frozen=True)
class MlaPattern:
    sdpa: Op
    q: str
    latent: str
    past: str | None
    new: str
    kv_b: str
    mask: str
    scale: float | None
    absorbed: frozenset[str]


def d_latent(cx) -> int:
    d = cx.block.dims
    return d["kv_lora_rank"] + d.get("qk_rope_head_dim", 0)


def _producers(cx) -> dict[str, Op]:
    return {o: op for op in cx.ops for o in op.outputs}


def match_mla(cx) -> MlaPattern:
    name = cx.block.name
    sdpas = [op for op in cx.ops if op.target == "scaled_dot_product_attention"]
    if len(sdpas) != 1:
        raise LoweringError(f"block {name!r}: latent attention needs one SDPA (found {len(sdpas)})")
    sdpa = sdpas[0]
    args, kwargs = sdpa.attrs.get("args", ()), sdpa.attrs.get("kwargs", {})

    def arg(i: int, key: str):
        return args[i] if i < len(args) else kwargs.get(key)

    mask = arg(3, "attn_mask")
    if not isinstance(mask, ValueRef) or cx.spec(mask.name).dtype != "bool":
        raise LoweringError(f"block {name!r}: latent attention needs a boolean SDPA mask")
    if arg(5, "is_causal") or (arg(4, "dropout_p") or 0.0) != 0.0:
        raise LoweringError(f"block {name!r}: latent attention does not lower is_causal or dropout")
    producer = _producers(cx)
    # value <- split <- transpose <- view <- linear(c_kv, kv_b_proj)
    value = arg(2, "value").name
    kv_b = None
    latent_part = None
    for _ in range(8):
        op = producer.get(value)
        if op is None:
            break
        if op.target == "linear":
            kv_b = op.inputs[1]
            latent_part = op.inputs[0]
            break
        value = op.inputs[0]
    if kv_b is None or not cx.is_param(kv_b):
        raise LoweringError(f"block {name!r}: the SDPA value does not come from a kv_b projection")
    split = producer.get(latent_part)
    latent = split.inputs[0] if split is not None else None
    if latent is None or cx.spec(latent).shape[-1] != d_latent(cx):
        raise LoweringError(
            f"block {name!r}: kv_b does not project a split of the latent "
            f"[B, S, kv_lora_rank + rope] (cat([past_kv, new_latent], L) or the new latent)"
        )
    cat = producer.get(latent)
    with_cache = cat is not None and cat.target == "cat" and len(cat.inputs) == 2 and cat.inputs[0].startswith("past_kv")
    q = arg(0, "query").name
    pattern_inputs = {q, latent, mask.name}
    absorbed = _dead_after(cx, sdpa, pattern_inputs)
    past, new = (cat.inputs[0], cat.inputs[1]) if with_cache else (None, latent)
    return MlaPattern(sdpa, q, latent, past, new, kv_b, mask.name, kwargs.get("scale"), frozenset(absorbed))


def lower_latent_attention(cx) -> None:
    from passes.lower.rules import rule_for

    try:
        pattern = match_mla(cx)
    except LoweringError:
        # latent attention of another form (transformers' DeepSeek-V3: the normed latent and
        # the roped key part apart, no cache) runs the model's own ops under the ordinary
        # layout rules, which refuse what they cannot split exactly
        for op in cx.ops:
            rule_for(op)(cx, op)
        return
    cx.lower_ops_replacing(pattern.sdpa, lambda: _emit(cx, pattern), pattern.absorbed)


def _emit(cx, pt: MlaPattern) -> None:
    d = cx.block.dims
    kv_lora = d["kv_lora_rank"]
    nope = d["head_dim"] - d.get("qk_rope_head_dim", 0)
    want_q, want_latent, want_mask, want_w, out_pl = {}, {}, {}, {}, {}
    mask_batch = same(cx.spec(pt.mask).shape[0], B_SYM)
    for axis in cx.axes:
        p = cx.on(pt.q, axis)
        if p.is_shard and p.dim == 1:
            want_q[axis], want_latent[axis], want_mask[axis] = p, REPLICATE, REPLICATE
            want_w[axis], out_pl[axis] = shard(0), p
        elif p.is_shard and p.dim == 0:
            want_q[axis], want_latent[axis] = p, shard(0)
            want_mask[axis] = shard(0) if mask_batch else REPLICATE
            want_w[axis], out_pl[axis] = REPLICATE, p
        else:
            want_q[axis] = want_latent[axis] = want_mask[axis] = REPLICATE
            want_w[axis] = out_pl[axis] = REPLICATE

    def laid(value: str, per_axis: dict):
        layout = cx.layout(value)
        for axis, placement in per_axis.items():
            layout = layout.with_axis(axis, placement)
        return layout

    q = cx.require(pt.q, laid(pt.q, want_q))
    latent = cx.require(pt.latent, laid(pt.latent, want_latent))
    mask = cx.require(pt.mask, laid(pt.mask, want_mask))
    from ir.layout import Layout

    w_layout = Layout.replicated(cx.axes)
    for axis, placement in want_w.items():
        w_layout = w_layout.with_axis(axis, placement)
    w = cx.param(pt.kv_b, w_layout)
    out_layout = Layout.replicated(cx.axes)
    for axis, placement in out_pl.items():
        out_layout = out_layout.with_axis(axis, placement)
    out = cx.define(pt.sdpa.outputs[0], out_layout, "attn")
    cx.steps.append(
        Compute(
            target="mla_attention",
            args=(ValueRef(q), ValueRef(latent), ValueRef(w), ValueRef(mask)),
            kwargs={"kv_lora": kv_lora, "nope": nope, "scale": pt.scale},
            outputs=(out,),
            source_op=pt.sdpa.name,
        )
    )


def lower_latent_helix(cx) -> None:
    """Helix over a latent cache (TPA = 1, KVP = N): the latent cache split along the
    sequence over kvp (round-robin blocks, as for GQA Helix); every kvp rank absorbs W_UK
    into the query of all heads and attends over its latent slice as one shared KV head
    (keys: the latent, values: its c_kv part), producing partials + log-sum-exp; the
    all-to-all over kvp regroups them by head, `helix_combine` makes them exact, and
    `mla_value_up` applies W_UV to this rank's heads; the output projection is row-parallel
    over kvp."""
    from passes.lower.helix import _build, _shift, append_block

    pt = match_mla(cx)
    if pt.past is None:
        raise LoweringError(f"block {cx.block.name!r}: helix needs a KV cache (decode)")
    if "tp" in cx.axes:
        raise LoweringError(
            f"block {cx.block.name!r}: latent attention has one shared KV head, so helix needs "
            f"tpa = 1 (the plan's mesh has tp={cx.sizes['tp']})"
        )
    absorbed = set(pt.absorbed)
    producer = _producers(cx)
    cat = producer[pt.latent]
    if not any(pt.latent in op.inputs for op in cx.ops if op.name not in absorbed and op is not pt.sdpa):
        absorbed.add(cat.name)
    cx.lower_ops_replacing(pt.sdpa, lambda: _emit_helix(cx, pt, _build, _shift, append_block), absorbed)


def _emit_helix(cx, pt: MlaPattern, _build, _shift, append_block) -> None:
    from ir.polynomial import constant
    from ir.rank_program import AxisRank, Collective, Wait
    from ir.tensor import TensorSpec

    b = cx.b
    d = cx.block.dims
    kv_lora = d["kv_lora_rank"]
    nope = d["head_dim"] - d.get("qk_rope_head_dim", 0)
    rep = {"kvp": REPLICATE}
    q = cx.require(pt.q, _with_axes(cx, pt.q, rep))
    new = cx.require(pt.new, _with_axes(cx, pt.new, rep))
    mask = cx.require(pt.mask, _with_axes(cx, pt.mask, rep))
    past = cx.local(pt.past)
    w = cx.param(pt.kv_b, _build(cx, {}))
    q_layout = b.layout(q)
    dp = {"dp": q_layout.on("dp")} if "dp" in cx.axes else {}
    q_spec = cx.spec(pt.q)
    batch, heads, tokens = q_spec.shape[0], q_spec.shape[1], q_spec.shape[2]
    hopb = int(cx.plan.extras.get("hopb", 1))
    kvp_block = append_block(cx.plan.extras)
    local_batch = cx.local_shape_of(pt.q, q_layout)[0]
    slice_global = batch / hopb
    slice_local = local_batch / hopb
    kvp = b.sizes["kvp"]
    value_dim = d.get("v_head_dim", nope)
    outs: list[str] = []
    for s in range(hopb):
        tag = f"{pt.sdpa.name}.helix{s}"
        part_spec = TensorSpec((constant(kvp), slice_global, heads, tokens, constant(kv_lora + 1)), "float32")
        cx.extra_specs[f"{tag}.part"] = part_spec
        part = cx.define(f"{tag}.part", _build(cx, {**_shift(dp, 1), "kvp": shard(0)}),
                         f"partial{s}" if hopb > 1 else "partial")
        cx.steps.append(Compute(
            target="mla_helix_partial",
            args=(ValueRef(q), ValueRef(past), ValueRef(new), ValueRef(w), ValueRef(mask), AxisRank("kvp"),
                  s * slice_local, slice_local),
            kwargs={"kvp_block": kvp_block, "kv_lora": kv_lora, "nope": nope, "scale": pt.scale},
            outputs=(part,), source_op=pt.sdpa.name,
        ))
        cx.extra_specs[f"{tag}.parts"] = part_spec
        parts = b.new_value(f"{tag}.parts", part_spec, _build(cx, {**_shift(dp, 1), "kvp": shard(2)}),
                            f"parts{s}" if hopb > 1 else "parts")
        handle = f"work_{parts}"
        cx.steps.append(Collective(kind="all_to_all", axis="kvp", input=part, output=parts, handle=handle,
                                   src_dim=0, dst_dim=2))
        cx.steps.append(Wait(handle=handle, output=parts))
        out_spec = TensorSpec((slice_global, heads, tokens, constant(value_dim)), q_spec.dtype)
        out_layout = _build(cx, {**dp, "kvp": shard(1)})
        if hopb == 1:
            out = cx.define(pt.sdpa.outputs[0], out_layout, "attn")
        else:
            cx.extra_specs[f"{tag}.out"] = out_spec
            out = cx.define(f"{tag}.out", out_layout, f"attn{s}")
        cx.steps.append(Compute(
            target="mla_helix_combine", args=(ValueRef(parts), ValueRef(w), AxisRank("kvp")),
            kwargs={"kv_lora": kv_lora, "nope": nope, "like": ValueRef(q)}, outputs=(out,),
            source_op=pt.sdpa.name,
        ))
        outs.append(out)
    if hopb > 1:
        out = cx.define(pt.sdpa.outputs[0], _build(cx, {**dp, "kvp": shard(1)}), "attn")
        cx.steps.append(Compute(target="cat", args=([ValueRef(o) for o in outs], 0), kwargs={}, outputs=(out,),
                                source_op=pt.sdpa.name))


def _with_axes(cx, value: str, per_axis: dict):
    layout = cx.layout(value)
    for axis, p in per_axis.items():
        if axis in cx.axes:
            layout = layout.with_axis(axis, p)
    return layout
