"""Vocabulary parallelism: embedding rows and LM-head rows split over tp. The embedding
ends in an all-reduce of the hidden states; the LM head gathers the logits it produced
(inference needs the next token's logits; training's loss is completed from per-rank
max, sum-exp and target logit instead, see the training issue)."""

from __future__ import annotations

from ir.graph import Block
from passes.parallelize.strategy import MODEL_AXES, REPLICATE, Collective, Strategy, divides


def _embedding_bytes(block: Block, tokens: int, elem: float) -> float:
    return tokens * block.dims["hidden"] * elem if block.kind == "embedding" else 0.0


def _logits_bytes(block: Block, tokens: int, elem: float) -> float:
    return tokens * block.dims["vocab"] * elem if block.kind == "lm_head" else 0.0


VOCAB = Strategy(
    name="vocab",
    kinds=frozenset({"embedding", "lm_head"}),
    axes=MODEL_AXES,
    summary="vocabulary rows split over tp; all-reduce (embedding) / all-gather logits (head)",
    layout_in=REPLICATE,
    layout_out=REPLICATE,
    splits_weights=True,
    collectives=(
        Collective("all_reduce", MODEL_AXES, "embedding output", _embedding_bytes),
        Collective("all_gather", MODEL_AXES, "logits", _logits_bytes),
    ),
    requirements=(divides("vocab"),),
)
