"""Read a block's semantic dims from its ops and parameters.

Dims come from shapes in the graph, not from configs: heads and head dims from the attention
op's operands, KV heads by walking the key operand back through the head-repeat ops, expert
count and top-k from the router and `topk`, FFN width from the last projection's input.
Latent attention (MLA) is recognized by its low-rank KV projection: a projection into a
normalized latent whose size (`kv_lora_rank`) is smaller than the heads' total width.
"""

from __future__ import annotations

from ir.graph import Block, Graph, Op, ValueRef
from ir.polynomial import Polynomial, as_polynomial

MOVEMENT_TARGETS = frozenset(
    {
        "expand",
        "reshape",
        "view",
        "_unsafe_view",
        "unsqueeze",
        "squeeze.dim",
        "clone",
        "contiguous",
        "repeat_interleave.self_int",
        "flatten.using_ints",
        "index.Tensor",
        "repeat",
        "slice.Tensor",
        "transpose.int",
        "permute",
        "cat",
        "index_select",
        "to.dtype",
        "_to_copy",
    }
)


def _int(e: Polynomial | int) -> int | None:
    return as_polynomial(e).as_int()


def _ops(graph: Graph, block: Block) -> list[Op]:
    return list(graph.iter_ops(block.ops))


def _ref_args(op: Op) -> list[str]:
    return [a.name for a in op.attrs.get("args", ()) if isinstance(a, ValueRef)]


def _param_of(graph: Graph, block: Block, needle: str) -> list:
    return [graph.params[v] for v in block.params if needle in graph.params[v].name]


def infer_dims(graph: Graph, block: Block) -> dict[str, int]:
    fn = {
        "embedding": _embedding_dims,
        "attention": _attention_dims,
        "mlp": _mlp_dims,
        "moe": _moe_dims,
        "norm": _norm_dims,
        "lm_head": _lm_head_dims,
    }.get(block.kind)
    return fn(graph, block) if fn else {}


def _embedding_dims(graph: Graph, block: Block) -> dict[str, int]:
    for op in _ops(graph, block):
        if op.target == "embedding":
            weight = op.inputs[0]
            shape = graph.values[weight].shape
            return {"vocab": _int(shape[0]), "hidden": _int(shape[1])}
    return {}


def _lm_head_dims(graph: Graph, block: Block) -> dict[str, int]:
    mm = [o for o in _ops(graph, block) if o.target in ("linear", "mm", "matmul", "addmm")]
    if not mm:
        return {}
    op = mm[-1]
    out = graph.values[op.outputs[0]].shape
    a = graph.values[op.inputs[0]].shape if op.target != "addmm" else graph.values[op.inputs[1]].shape
    return {"vocab": _int(out[-1]), "hidden": _int(a[-1])}


def _norm_dims(graph: Graph, block: Block) -> dict[str, int]:
    for v in block.params:
        shape = graph.params[v].shape
        if len(shape) == 1:
            return {"hidden": shape[0]}
    ops = _ops(graph, block)
    if ops:
        return {"hidden": _int(graph.values[ops[0].inputs[0]].shape[-1])}
    return {}


def _down_projection(graph: Graph, ops: list[Op]) -> Op | None:
    mms = [o for o in ops if o.target in ("linear", "mm", "addmm", "matmul")]
    return mms[-1] if mms else None


def _matmul_in_out(graph: Graph, op: Op) -> tuple[int | None, int | None]:
    x = op.inputs[1] if op.target == "addmm" else op.inputs[0]
    return _int(graph.values[x].shape[-1]), _int(graph.values[op.outputs[0]].shape[-1])


def _mlp_dims(graph: Graph, block: Block) -> dict[str, int]:
    ops = _ops(graph, block)
    down = _down_projection(graph, ops)
    if down is None:
        return {}
    ffn, hidden = _matmul_in_out(graph, down)
    weights = sum(graph.params[v].numel for v in block.params if len(graph.params[v].shape) == 2)
    gated = bool(hidden and ffn and weights >= 3 * hidden * ffn)
    return {"hidden": hidden, "ffn": ffn, "gated": int(gated)}


def _attention_core(graph: Graph, ops: list[Op]) -> tuple[str, str, str] | None:
    """(q, k, v) value names of the attention op, or of an eager softmax(q k^T) v."""
    for op in ops:
        if op.target.startswith(("scaled_dot_product", "_scaled_dot_product", "flex_attention")):
            refs = _ref_args(op)
            if len(refs) >= 3:
                return refs[0], refs[1], refs[2]
    producers = {v: o for o in ops for v in o.outputs}
    for op in ops:
        if op.target.startswith(("softmax", "_softmax")):
            x = op.inputs[0]
            while x in producers and producers[x].target not in ("matmul", "bmm", "einsum"):
                x = producers[x].inputs[0]
            scores = producers.get(x)
            consumers = [o for o in ops if o.target in ("matmul", "bmm") and op.outputs[0] in o.inputs]
            if scores is not None and len(scores.inputs) >= 2 and consumers:
                v = [i for i in consumers[0].inputs if i != op.outputs[0]]
                return scores.inputs[0], scores.inputs[1], v[0] if v else scores.inputs[1]
    return None


def _kv_heads(graph: Graph, ops: list[Op], k: str, head_dim: int | None) -> int | None:
    """Walk the key back through head-repeat and layout ops; the fewest heads seen on a 4-D
    [B, heads, S, d] tensor is the number of KV heads (GQA repeats them before attention)."""
    producers = {v: o for o in ops for v in o.outputs}
    best: int | None = None
    frontier = [k]
    seen: set[str] = set()
    while frontier:
        x = frontier.pop()
        if x in seen:
            continue
        seen.add(x)
        shape = graph.values[x].shape if x in graph.values else ()
        if len(shape) == 4 and _int(shape[-1]) == head_dim:
            h = _int(shape[1])
            if h is not None:
                best = h if best is None else min(best, h)
        elif len(shape) == 5 and _int(shape[-1]) == head_dim:
            h = _int(shape[1])
            if h is not None:
                best = h if best is None else min(best, h)
        op = producers.get(x)
        if op is not None and op.target in MOVEMENT_TARGETS:
            frontier.extend(i for i in op.inputs if i not in graph.params)
    return best


def _attention_dims(graph: Graph, block: Block) -> dict[str, int]:
    ops = _ops(graph, block)
    core = _attention_core(graph, ops)
    dims: dict[str, int] = {}
    hidden = None
    for op in ops:
        if op.target in ("linear", "addmm", "mm", "matmul"):
            hidden, _ = _matmul_in_out(graph, op)
            break
    o_proj = _down_projection(graph, ops)
    if o_proj is not None:
        _, hidden_out = _matmul_in_out(graph, o_proj)
        hidden = hidden_out or hidden
    dims["hidden"] = hidden
    if core is None:
        return dims
    q, k, v = core
    qs, vs = graph.values[q].shape, graph.values[v].shape
    q_heads, head_dim, v_dim = _int(qs[1]), _int(qs[-1]), _int(vs[-1])
    dims["q_heads"] = q_heads
    dims["head_dim"] = head_dim
    latent = _latent_dims(graph, block, q_heads, head_dim, v_dim)
    if latent:
        dims.update(latent)
        return dims
    dims["kv_heads"] = _kv_heads(graph, ops, k, head_dim) or q_heads
    if v_dim != head_dim:
        dims["v_head_dim"] = v_dim
    return dims


def _latent_dims(
    graph: Graph, block: Block, q_heads: int | None, head_dim: int | None, v_dim: int | None
) -> dict[str, int] | None:
    """MLA: a 1-D norm weight inside attention narrower than the heads' width, applied to the
    output of a projection whose width is that rank plus the shared rope dim."""
    norms = sorted(
        (graph.params[v] for v in block.params if len(graph.params[v].shape) == 1),
        key=lambda p: p.name,
    )
    kv_norm = [p for p in norms if "kv" in p.name.split(".")[-2]]
    if not kv_norm or not q_heads or not head_dim:
        return None
    kv_lora_rank = kv_norm[0].shape[0]
    if kv_lora_rank >= q_heads * head_dim:
        return None
    kv_a = [
        graph.params[v]
        for v in block.params
        if len(graph.params[v].shape) == 2 and "kv_a" in graph.params[v].name
    ]
    rope = kv_a[0].shape[0] - kv_lora_rank if kv_a else 0
    q_norm = [p for p in norms if p not in kv_norm and "q" in p.name.split(".")[-2]]
    # transformers' DeepSeek-V3 views the latent as one KV head [B, 1, S, r] (what its
    # cache holds) and expands it to per-head K/V every step; the model files keep it
    # [B, S, r + rope], the form the absorbed (and Helix) MLA lowering matches.
    one_head = any(
        len(graph.values[v].shape) == 4
        and _int(graph.values[v].shape[1]) == 1
        and _int(graph.values[v].shape[-1]) == kv_lora_rank
        for o in _ops(graph, block) for v in o.outputs if v in graph.values
    )
    return {
        "kv_lora_rank": kv_lora_rank,
        "q_lora_rank": q_norm[0].shape[0] if q_norm else 0,
        "qk_rope_head_dim": rope,
        "v_head_dim": v_dim,
        **({"latent_one_head": 1} if one_head else {}),
    }


def _moe_dims(graph: Graph, block: Block) -> dict[str, int]:
    ops = _ops(graph, block)
    dims: dict[str, int] = {}
    # Group-limited routing (DeepSeek-V3) runs topk over expert groups first; the expert-level
    # topk is the one over the widest axis.
    topks = [o for o in ops if o.target == "topk"]
    if topks:
        width = {o.name: _int(graph.values[o.inputs[0]].shape[-1]) or 0 for o in topks}
        topk = [o for o in topks if width[o.name] == max(width.values())][-1]
        args = topk.attrs.get("args", ())
        k = args[1] if len(args) > 1 else topk.attrs.get("kwargs", {}).get("k")
        dims["top_k"] = int(k)
        dims["experts"] = width[topk.name]
    router = None
    for op in ops:
        if op.target in ("linear", "mm", "matmul") and _int(
            graph.values[op.outputs[0]].shape[-1]
        ) == dims.get("experts"):
            router = op
            break
    hidden = _int(graph.values[router.inputs[0]].shape[-1]) if router else None
    dims["hidden"] = hidden
    experts = dims.get("experts") or 1
    router_params = set(router.inputs) if router else set()
    shared, routed = [], []
    for v in block.params:
        p = graph.params[v]
        if v in router_params or len(p.shape) < 2:
            continue
        (shared if "shared" in p.name else routed).append(p)
    routed_numel = sum(p.numel for p in routed)
    widths = sorted({d for p in routed for d in p.shape[-2:] if d != hidden and d != experts})
    ffn = widths[0] if widths else 0
    gated = bool(ffn and hidden and routed_numel >= 3 * experts * ffn * hidden)
    dims["ffn"] = ffn
    dims["gated"] = int(gated)
    per_expert = (3 if gated else 2) * ffn * (hidden or 0)
    shared_numel = sum(p.numel for p in shared if "gate" != p.name.split(".")[-2])
    dims["shared_experts"] = round(shared_numel / per_expert) if per_expert and shared else 0
    return dims
