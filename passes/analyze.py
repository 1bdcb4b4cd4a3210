"""Per-block parameter count, FLOPs and bytes moved as formulas in B, T, L.

FLOPs count multiply-adds as 2 for every matmul-like op (linear, mm, addmm, bmm, matmul,
einsum, grouped mm), `2·B·H·T·S·(d_qk + d_v)` for attention over S keys, and one per output
element for elementwise ops and reductions (layout-only ops cost nothing). When the model was
traced without a KV cache (a Hugging Face model traced for prefill), an attention whose key
length is T attends over the cache as well: S is taken as T + L.

Bytes moved count what a kernel must read and write from HBM when elementwise ops fuse into
their neighbours: for matmul-like and attention ops all operands and results (weights
included); for an embedding the gathered rows; for every other op only its result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import ClassVar

from ir.graph import Block, Graph, Op, ValueRef
from ir.polynomial import ZERO, Polynomial, exact_quotient, product
from ir.tensor import L, T

LAYOUT_TARGETS = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "expand",
        "unsqueeze",
        "squeeze",
        "squeeze.dim",
        "squeeze.dims",
        "transpose.int",
        "permute",
        "t",
        "slice.Tensor",
        "select.int",
        "alias",
        "contiguous",
        "detach",
        "split.Tensor",
        "split_with_sizes",
        "chunk",
        "unbind.int",
        "arange",
        "arange.start",
        "arange.start_step",
        "full",
        "zeros",
        "ones",
        "empty.memory_format",
        "new_ones",
        "new_zeros",
        "scalar_tensor",
        "lift_fresh_copy",
    }
)
# Copies move bytes but do no arithmetic.
COPY_TARGETS = frozenset(
    {
        "embedding",
        "index.Tensor",
        "index_select",
        "gather",
        "cat",
        "stack",
        "clone",
        "flatten.using_ints",
        "repeat_interleave.self_int",
        "repeat",
        "index_put",
        "index_put_",
        "scatter.src",
        "scatter.value",
        "copy",
        "to.dtype",
        "_to_copy",
        "zeros_like",
        "ones_like",
        "full_like",
        "empty_like",
    }
)
# transformers.grouped_mm_fallback: transformers 5's grouped expert matmul where
# torch._grouped_mm is not available (CPU export), [R, K] rows by [E, K, N] weights
GROUPED_MM_TARGETS = ("_grouped_mm", "transformers.grouped_mm_fallback")
MATMUL_TARGETS = frozenset({"linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "einsum", *GROUPED_MM_TARGETS})


def _numel(graph: Graph, v: str) -> Polynomial:
    return graph.values[v].numel if v in graph.values else ZERO


def _nbytes(graph: Graph, v: str) -> Polynomial:
    return graph.values[v].nbytes if v in graph.values else ZERO


def op_flops(graph: Graph, op: Op, *, cache_traced: bool = True) -> Polynomial:
    t = op.target
    if t in LAYOUT_TARGETS or not op.outputs:
        return ZERO
    out = op.outputs[0]
    if t == "linear":
        k = graph.values[op.inputs[1]].shape[-1] if len(op.inputs) > 1 else 0
        return 2 * _numel(graph, out) * k
    if t == "addmm":
        a = graph.values[op.inputs[1]].shape
        return 2 * _numel(graph, out) * a[-1]
    if t in ("mm", "bmm", "matmul", "baddbmm", *GROUPED_MM_TARGETS):
        refs = [a.name for a in op.attrs.get("args", ()) if isinstance(a, ValueRef)]
        a_name = refs[-2] if t == "baddbmm" and len(refs) >= 3 else (refs[0] if refs else op.inputs[0])
        k = graph.values[a_name].shape[-1]
        return 2 * _numel(graph, out) * k
    if t == "einsum":
        return _einsum_flops(graph, op)
    if t.startswith(("scaled_dot_product", "_scaled_dot_product")):
        refs = [a.name for a in op.attrs.get("args", ()) if isinstance(a, ValueRef)]
        q, k, v = (graph.values[r].shape for r in refs[:3])
        s = kv_length(k[-2], cache_traced)
        batch_heads = product(q[:-2])
        return 2 * batch_heads * q[-2] * s * (q[-1] + v[-1])
    if t in COPY_TARGETS:
        return ZERO
    return _numel(graph, out)


def kv_length(s: Polynomial, cache_traced: bool) -> Polynomial:
    """Keys attended: as traced, or T + L when the trace had no cache and keys are the T new
    tokens."""
    if not cache_traced and s == T:
        return T + L
    return s


def _einsum_flops(graph: Graph, op: Op) -> Polynomial:
    args = op.attrs.get("args", ())
    eq = args[0] if args and isinstance(args[0], str) else None
    operands = args[1] if len(args) > 1 else ()
    if eq is None or not operands:
        return _numel(graph, op.outputs[0])
    lhs = eq.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, Polynomial] = {}
    for sub, ref in zip(lhs, operands, strict=False):
        if isinstance(ref, ValueRef):
            for ch, d in zip(re.sub(r"\.\.\.", "", sub), graph.values[ref.name].shape, strict=False):
                sizes.setdefault(ch, d)
    return 2 * product(sizes.values())


def op_bytes(graph: Graph, op: Op, *, cache_traced: bool = True) -> Polynomial:
    t = op.target
    if t in LAYOUT_TARGETS or not op.outputs:
        return ZERO
    outs = sum((_nbytes(graph, v) for v in op.outputs), ZERO)
    if t == "embedding":
        return 2 * outs
    if t in MATMUL_TARGETS or t.startswith(("scaled_dot_product", "_scaled_dot_product")):
        ins = sum((_nbytes(graph, v) for v in op.inputs), ZERO)
        if t.startswith(("scaled", "_scaled")) and not cache_traced:
            refs = [a.name for a in op.attrs.get("args", ()) if isinstance(a, ValueRef)]
            for r in refs[1:3]:
                # the keys/values of the traced T tokens stand for T + L cached ones
                s = graph.values[r].shape[-2]
                ins += exact_quotient(_nbytes(graph, r) * kv_length(s, False), s) - _nbytes(graph, r)
        return ins + outs
    return outs


@dataclass(frozen=True)
class AnalyzeCosts:
    """Post: every block has `param_count` (the parameters it owns), `flops` and
    `bytes_moved` (formulas in B, T, L)."""

    name: ClassVar[str] = "analyze-costs"

    def run(self, graph: Graph) -> Graph:
        traced = bool(graph.meta.get("kv_cache_traced", True))
        blocks: list[Block] = []
        index = {op.name: op for op in graph.ops}
        for b in graph.blocks:
            flops = ZERO
            nbytes = ZERO
            ops = [index[name] for name in b.ops]
            for op in ops:
                flops += op_flops(graph, op, cache_traced=traced)
                nbytes += op_bytes(graph, op, cache_traced=traced)
            params = sum(graph.params[v].numel for v in b.params if graph.params[v].counts)
            blocks.append(
                replace(
                    b,
                    param_count=params,
                    flops=flops,
                    bytes_moved=nbytes,
                )
            )
        return replace(graph, blocks=blocks)
