"""Vocabulary parallelism: embedding rows and LM-head rows split over tp. The embedding
ends in an all-reduce of the hidden states. In inference the LM head gathers the logits it
produced (the next token's logits). In training no rank gathers logits: the cross-entropy is
completed from each rank's max, sum-exp and target logit over its vocabulary slice, one
gather of three numbers per token (`cross_entropy_sum` in the training program).

Backward, as the generated training program runs it: every collective is a differentiable
op whose backward is its adjoint (codegen's `Collectives`), and gradients flowing back along
the residual stream are partial over tp until an adjoint sums them. So the embedding's
all-reduce is all-reduced again in backward, and the loss statistics' all-gather becomes a
reduce-scatter of the statistics' gradient; the LM head's partial input gradient is summed
by the next all-reduce backward upstream (priced with that block), not by one of its own."""

from __future__ import annotations

from ir.graph import Block
from passes.parallelize.strategy import MODEL_AXES, REPLICATE, Collective, Strategy, divides


def _embedding_bytes(block: Block, tokens: int, elem: float) -> float:
    return tokens * block.dims["hidden"] * elem if block.kind == "embedding" else 0.0


def _logits_bytes(block: Block, tokens: int, elem: float) -> float:
    return tokens * block.dims["vocab"] * elem if block.kind == "lm_head" else 0.0


LOSS_STATS_PER_TOKEN = 3  # max, sum-exp, target logit (fp32)


def _loss_stats_bytes(block: Block, tokens: int, elem: float) -> float:
    return tokens * LOSS_STATS_PER_TOKEN * 4.0 if block.kind == "lm_head" else 0.0


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
        Collective(
            "all_gather", MODEL_AXES, "logits", _logits_bytes,
            phases=frozenset({"decode", "prefill"}),
        ),
        Collective(
            "all_gather", MODEL_AXES, "loss statistics", _loss_stats_bytes,
            phases=frozenset({"train"}),
        ),
    ),
    requirements=(divides("vocab"),),
)
