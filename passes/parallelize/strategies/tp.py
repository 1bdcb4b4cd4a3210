"""Megatron tensor parallelism: column-parallel QKV / up-projections, row-parallel output
projection, one all-reduce of the block output. Attention heads split over tp; the KV cache
holds this rank's KV heads only (tp must divide the KV heads: no duplication). Latent (MLA)
attention splits its per-head projections (q_b/q, kv_b, o) and keeps the low-rank
projections and the latent cache replicated (every head reads the one latent)."""

from __future__ import annotations

from ir.graph import Block
from passes.parallelize.context import PlanContext
from passes.parallelize.strategy import (
    MODEL_AXES,
    REPLICATE,
    Collective,
    Strategy,
    divides,
)


def hidden_bytes(block: Block, tokens: int, elem: float) -> float:
    return tokens * block.dims["hidden"] * elem


def tp_requirements(block: Block, ctx: PlanContext) -> str | None:
    """Heads (attention) or FFN width (MLP, experts) must split evenly over tp."""
    if block.kind == "attention" and "kv_lora_rank" in block.dims:
        # latent attention: heads split, the latent cache (one shared KV head) replicated
        checks = (divides("q_heads"),)
    elif block.kind == "attention":
        checks = (divides("q_heads"), divides("kv_heads"))
    else:
        checks = (divides("ffn"),)
    for check in checks:
        reason = check(block, ctx)
        if reason:
            return reason
    return None


TP = Strategy(
    name="tp",
    # MoE blocks: TP inside the experts is `tp_ep` (with kvp = 1, the experts unsplit)
    kinds=frozenset({"attention", "mlp"}),
    axes=MODEL_AXES,
    summary="heads / FFN columns split over tp; all-reduce after the row-parallel projection",
    layout_in=REPLICATE,
    layout_out=REPLICATE,
    splits_weights=True,
    collectives=(Collective("all_reduce", MODEL_AXES, "block output", hidden_bytes),),
    requirements=(tp_requirements,),
)
