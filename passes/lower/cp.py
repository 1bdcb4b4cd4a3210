"""Context-parallel (ring) attention: the distributed kernel that replaces SDPA under CP.

Layouts (cp mesh axis, optionally with tp inside):
* The residual stream, token ids and positions are split along the new tokens over cp in the
  load-balanced order: the driver pads T to a multiple of 2·cp and permutes the tokens so that
  cp rank i holds chunks i and 2·cp − 1 − i (runtime `cp_balance`); every block other than
  attention works on its local tokens unchanged (RoPE reads the permuted positions).
* Q/K/V projections and RoPE: the ordinary op rules (column-parallel over tp when the block's
  strategy splits heads), so q, k_new, v_new arrive as cp=Shard(T), tp=Shard(heads).
* A cached prefix [B, K, L, d] stays where it lives: contiguous slices of L over cp (heads
  over tp). Only the new tokens are balanced.
* The attention mask is the model's own boolean mask over global positions [B or 1, 1, T,
  L + T], replicated; the kernel reads the rows of its queries and the columns of the keys in
  hand, so causality and cache validity are exactly the model's.
* SDPA (with the KV concat and the GQA repeats) → `ring_attention_pass_kv` (K/V blocks rotate
  over cp in cp − 1 overlapped send/recv steps) or `ring_attention_pass_q` (queries rotate,
  then one all-to-all returns the partial outputs); partials merge by log-sum-exp. The output
  keeps q's layout, so the output projection and the rest of the block are token-local.
"""

from __future__ import annotations

from dataclasses import dataclass

from ir.graph import Op, ValueRef
from ir.layout import REPLICATE, Layout, LoweringError, shard
from ir.rank_program import Compute, MeshGroupsRef
from passes.lower.helix import kv_source, match_sdpa

KERNELS = {"cp_pass_kv": "ring_attention_pass_kv", "cp_pass_q": "ring_attention_pass_q"}


@dataclass(frozen=True)
class _Pattern:
    sdpa: Op
    q: str
    k_new: str
    v_new: str
    k_cache: str | None
    v_cache: str | None
    mask: str
    absorbed: frozenset[str]


def _match(cx) -> _Pattern:
    sdpa, arg, mask = match_sdpa(
        cx, "context-parallel attention",
        "it gives causality and cache validity by global position",
    )
    absorbed: set[str] = set()
    who = "context-parallel attention"
    k_cache, k_new = kv_source(cx, arg(1, "key").name, absorbed, who, cache_optional=True)
    v_cache, v_new = kv_source(cx, arg(2, "value").name, absorbed, who, cache_optional=True)
    if (k_cache is None) != (v_cache is None):
        raise LoweringError(f"block {cx.block.name!r}: keys and values disagree on a cached prefix")
    return _Pattern(
        sdpa, arg(0, "query").name, k_new, v_new, k_cache, v_cache, mask.name, frozenset(absorbed)
    )


def lower_cp_attention(cx) -> None:
    """Lower a context-parallel attention block: ordinary op rules, with the KV concat, the
    GQA repeats and SDPA replaced by the ring kernel of the block's strategy."""

    if "cp" not in cx.axes:
        raise LoweringError(
            f"block {cx.block.name!r} uses {cx.plan.strategy}, but the plan's mesh "
            f"{cx.b.mesh} has no cp axis of size > 1"
        )
    pattern = _match(cx)
    cx.lower_ops_replacing(pattern.sdpa, lambda: _emit_kernel(cx, pattern), pattern.absorbed)


def _emit_kernel(cx, pt: _Pattern) -> None:
    heads = {"cp": shard(2), "tp": shard(1)}
    q = cx.require(pt.q, _with(cx, pt.q, heads))
    k_new = cx.require(pt.k_new, _with(cx, pt.k_new, heads))
    v_new = cx.require(pt.v_new, _with(cx, pt.v_new, heads))
    mask = cx.require(pt.mask, _with(cx, pt.mask, {"cp": REPLICATE, "tp": REPLICATE}))
    caches = [None, None]
    if pt.k_cache is not None:
        caches = [cx.local(pt.k_cache), cx.local(pt.v_cache)]
        for c in caches:
            layout = cx.b.layout(c)
            if layout.on("cp") != shard(2):
                raise LoweringError(
                    f"block {cx.block.name!r}: cached prefix {c} is {layout.describe()}; "
                    "context-parallel attention needs it split along L over cp"
                )
    q_layout = cx.b.layout(q)
    out = cx.define(pt.sdpa.outputs[0], q_layout, "attn")
    scale = pt.sdpa.attrs.get("kwargs", {}).get("scale")
    cx.steps.append(
        Compute(
            target=KERNELS[cx.plan.strategy],
            args=(
                ValueRef(q), ValueRef(k_new), ValueRef(v_new),
                ValueRef(caches[0]) if caches[0] else None,
                ValueRef(caches[1]) if caches[1] else None,
                ValueRef(mask), MeshGroupsRef(),
            ),
            kwargs={"scale": scale},
            outputs=(out,),
            source_op=pt.sdpa.name,
        )
    )


def _with(cx, value: str, per_axis: dict) -> Layout:
    layout = cx.layout(value)
    for axis, p in per_axis.items():
        if axis in cx.axes:
            layout = layout.with_axis(axis, p)
    return layout
