"""Recognize blocks: cut the op list into embedding, attention, MLP, MoE, norm, LM head.

Recognition reads structure, not class names: the repeated-layer container is the module
list with the most indices; inside a layer, each direct child module is classified by the
ops it contains (attention has `scaled_dot_product_attention` or a softmax between two
matmuls; MoE has a `topk`; a norm normalizes with one weight of the hidden size; an MLP has
matmuls). Ops that belong to no child (residual adds, masks) join a neighbouring block so
every op is covered once. Dims are read afterwards by `passes.block_dims`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import ClassVar

from ir.graph import Block, Graph, Op
from passes.block_dims import infer_dims

MATMUL_TARGETS = frozenset(
    {"linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "einsum", "_grouped_mm"}
)
ATTENTION_TARGETS = frozenset(
    {
        "scaled_dot_product_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "flex_attention",
    }
)
SOFTMAX_TARGETS = frozenset({"softmax.int", "_softmax", "softmax"})
NORM_TARGETS = frozenset({"layer_norm", "rms_norm", "native_layer_norm", "_fused_rms_norm"})
TOPK_TARGETS = frozenset({"topk"})

_INDEXED = re.compile(r"^(.*?)\.(\d+)(?:\.|$)")


@dataclass(frozen=True)
class RecognizeBlocks:
    """Pre: canonical IR. Post: `graph.blocks` covers every op exactly once, each block with a
    kind in `ir.graph.BLOCK_KINDS`, a user-facing name (`embedding`, `layers.3.attention`,
    `layers.3.norm_attn`, `final_norm`, `lm_head`, ...) and its semantic dims."""

    name: ClassVar[str] = "recognize-blocks"

    def run(self, graph: Graph) -> Graph:
        container = _layer_container(graph.ops)
        regions = _regions(graph.ops, container)
        blocks = _classify(graph, regions, container)
        blocks = [_with_dims(graph, b) for b in blocks]
        graph = replace(graph, blocks=blocks)
        graph.meta["layer_container"] = container
        return graph


TRAIT_KEYS = frozenset({"gated", "latent_one_head"})


def _with_dims(graph: Graph, block: Block) -> Block:
    found = infer_dims(graph, block)
    dims = {k: v for k, v in found.items() if k not in TRAIT_KEYS and v is not None}
    traits = {k: v for k, v in found.items() if k in TRAIT_KEYS}
    if block.kind == "attention":
        # `sdpa`: the scores, softmax and values are one attention kernel (what Helix and ring
        # attention replace); 0 for eager attention (matmul, softmax, matmul), as Gemma-2's
        # soft-capped scores run.
        ops = graph.iter_ops(block.ops)
        traits["sdpa"] = int(any(o.target in ATTENTION_TARGETS for o in ops))
    return replace(block, dims=dims, traits=traits)


def _layer_container(ops: list[Op]) -> str:
    """The module-list path with the most distinct indices (`model.layers`, `transformer.h`)."""
    indices: dict[str, set[int]] = {}
    for op in ops:
        m = _INDEXED.match(op.module_path)
        if m:
            indices.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not indices:
        return ""
    return max(sorted(indices), key=lambda k: len(indices[k]))


@dataclass
class _Region:
    """Consecutive ops owned by one module (a layer child, or a top-level module)."""

    layer: int | None
    child: str  # layer child attribute name, or module path for top level
    ops: list[Op]


def _regions(ops: list[Op], container: str) -> list[_Region]:
    """Split ops into regions by (layer, child module). Layer-level glue forms its own
    region with child '' and is merged later."""
    regions: list[_Region] = []
    prefix = container + "."
    for op in ops:
        layer: int | None = None
        child = op.module_path
        if container and op.module_path.startswith(prefix):
            rest = op.module_path[len(prefix) :]
            idx, _, tail = rest.partition(".")
            if idx.isdigit():
                layer = int(idx)
                child = tail.split(".")[0] if tail else ""
        if regions and regions[-1].layer == layer and regions[-1].child == child:
            regions[-1].ops.append(op)
        else:
            regions.append(_Region(layer, child, [op]))
    return _merge_interleaved(regions)


def _merge_interleaved(regions: list[_Region]) -> list[_Region]:
    """A child module whose ops are interrupted by glue (e.g. rotary tables computed inside
    attention) appears as several regions; merge every region of one (layer, child) into its
    first appearance, keeping program order within the merged region. A top-level module's
    ops before the layers and after them stay apart (GPT-2's `transformer` flattens the
    input ids first and reshapes the final norm's output last)."""
    merged: OrderedDict[tuple[int | None, str, bool], _Region] = OrderedDict()
    seen_layer = False
    for r in regions:
        seen_layer = seen_layer or r.layer is not None
        key = (r.layer, r.child, seen_layer and r.layer is None)
        if key in merged and r.child != "":
            merged[key].ops.extend(r.ops)
        elif key in merged:
            merged[(r.layer, f"{r.child}#{len(merged)}", key[2])] = r
        else:
            merged[key] = r
    return list(merged.values())


def _targets(ops: list[Op]) -> set[str]:
    return {o.target for o in ops}


def _is_attention(ops: list[Op]) -> bool:
    t = _targets(ops)
    if t & ATTENTION_TARGETS:
        return True
    n_mm = sum(1 for o in ops if o.target in MATMUL_TARGETS)
    return bool(t & SOFTMAX_TARGETS) and n_mm >= 4


def _is_moe(ops: list[Op]) -> bool:
    return bool(_targets(ops) & TOPK_TARGETS) and any(o.target in MATMUL_TARGETS for o in ops)


def _is_norm(graph: Graph, ops: list[Op]) -> bool:
    if any(o.target in MATMUL_TARGETS for o in ops):
        return False
    t = _targets(ops)
    if t & NORM_TARGETS:
        return True
    reductions = {"mean.dim", "var_mean.correction", "var.correction", "mean"}
    weights = [v for o in ops for v in o.inputs if v in graph.params]
    return bool(t & reductions) and ("rsqrt" in t or "sqrt" in t) and len(weights) <= 2


def _is_mlp(ops: list[Op]) -> bool:
    return sum(1 for o in ops if o.target in MATMUL_TARGETS) >= 2


def _classify(graph: Graph, regions: list[_Region], container: str) -> list[Block]:
    first_layer_pos = next((i for i, r in enumerate(regions) if r.layer is not None), None)
    last_layer_pos = max((i for i, r in enumerate(regions) if r.layer is not None), default=None)
    drafts: list[tuple[str, str, int | None, list[Op], str]] = []  # name, kind, layer, ops, path
    for i, r in enumerate(regions):
        ops = r.ops
        if r.layer is not None:
            if r.child == "" or r.child.startswith("#"):
                kind = "glue"
            elif _is_moe(ops):
                kind = "moe"
            elif _is_attention(ops):
                kind = "attention"
            elif _is_norm(graph, ops):
                kind = "norm"
            elif _is_mlp(ops):
                kind = "mlp"
            else:
                kind = "other"
            drafts.append((r.child, kind, r.layer, ops, ops[0].module_path))
            continue
        before = first_layer_pos is None or i < first_layer_pos
        after = last_layer_pos is not None and i > last_layer_pos
        path = r.child
        is_root = path == "" or container.startswith(path + ".")
        has_matmul = any(o.target in MATMUL_TARGETS for o in ops)
        if "embedding" in _targets(ops) and before:
            kind = "embedding"
        elif after and _is_norm(graph, ops):
            kind = "final_norm"
        elif after and has_matmul:
            kind = "lm_head"
        elif is_root:
            kind = "glue"
        else:
            kind = "other"
        drafts.append((r.child, kind, None, ops, r.child))
    drafts = _absorb_glue(graph, drafts)
    return _name_blocks(graph, drafts)


def _absorb_glue(graph, drafts):
    """Glue (residual adds, masks, casts) joins the block before it in the same layer, or the
    block after it when it opens the model or a layer. Several embedding regions (token and
    position tables) fuse into one embedding block."""
    out: list[list] = []
    pending: list[Op] = []
    for child, kind, layer, ops, path in drafts:
        if kind == "glue":
            if out and out[-1][2] == layer:
                out[-1][3].extend(ops)
            else:
                pending.extend(ops)
            continue
        if kind == "embedding" and out and out[-1][1] == "embedding":
            out[-1][3].extend(pending + ops)
            pending = []
            continue
        out.append([child, kind, layer, pending + ops, path])
        pending = []
    if pending:
        if out:
            out[-1][3].extend(pending)
        else:
            out.append(["", "other", None, pending, ""])
    for d in out:
        order = {o.name: i for i, o in enumerate(graph.ops)}
        d[3].sort(key=lambda o: order[o.name])
    return out


def _name_blocks(graph: Graph, drafts) -> list[Block]:
    blocks: list[Block] = []
    used_params: set[str] = set()
    names_seen: dict[str, int] = {}
    producers_block: dict[str, int] = {}
    for idx, (_, _kind, _, ops, _) in enumerate(drafts):
        for o in ops:
            for v in o.outputs:
                producers_block[v] = idx
    major = {"attention": "attn", "mlp": "mlp", "moe": "mlp"}
    for idx, (child, kind, layer, ops, path) in enumerate(drafts):
        if layer is not None:
            if kind in ("attention", "mlp", "moe", "other"):
                base = f"layers.{layer}.{kind if kind != 'other' else _safe(child)}"
            else:  # norm
                base = f"layers.{layer}.{_norm_role(drafts, idx, producers_block, major)}"
            block_kind = kind
        elif kind == "final_norm":
            base, block_kind = "final_norm", "norm"
        elif kind in ("embedding", "lm_head"):
            base, block_kind = kind, kind
        else:
            base, block_kind = _safe(child.split(".")[-1]) or "prologue", "other"
        name = base
        if name in names_seen:
            names_seen[name] += 1
            name = f"{base}_{names_seen[base]}"
        else:
            names_seen[name] = 0
        params: list[str] = []
        for o in ops:
            for v in o.inputs:
                if v in graph.params and v not in used_params:
                    used_params.add(v)
                    params.append(v)
        blocks.append(
            Block(
                name=name,
                kind=block_kind,
                layer=layer,
                ops=tuple(o.name for o in ops),
                params=tuple(params),
                module_path=path,
            )
        )
    return blocks


def _norm_role(drafts, idx: int, producers_block: dict[str, int], major: dict[str, str]) -> str:
    """`norm_attn`/`norm_mlp` for a norm that feeds attention/MLP (pre-norm); otherwise
    `norm_attn_post`/`norm_mlp_post` after the block it follows."""
    _, _, layer, ops, _ = drafts[idx]
    outs = {v for o in ops for v in o.outputs}
    for j in range(idx + 1, len(drafts)):
        _, kind, lj, ops_j, _ = drafts[j]
        if lj != layer:
            break
        if kind in major and any(v in outs for o in ops_j for v in o.inputs):
            return f"norm_{major[kind]}"
    for j in range(idx - 1, -1, -1):
        _, kind, lj, _, _ = drafts[j]
        if lj != layer:
            break
        if kind in major:
            return f"norm_{major[kind]}_post"
    return "norm"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", text).strip("._")
