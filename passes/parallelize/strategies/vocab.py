"""Vocabulary parallelism: embedding rows and LM-head rows split over tp. The embedding
ends in an all-reduce of the hidden states (its backward needs none: each rank's rows get
their own gradient). In inference the LM head gathers the logits it produced (the next
token's logits). In training no rank gathers logits: the cross-entropy is completed from
each rank's max, sum-exp and target logit over its vocabulary slice, one gather of three
numbers per token; the backward's softmax is local and only the hidden-state gradient is
all-reduced."""

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


def _lm_head_input_grad_bytes(block: Block, tokens: int, elem: float) -> float:
    return tokens * block.dims["hidden"] * elem if block.kind == "lm_head" else 0.0


VOCAB = Strategy(
    name="vocab",
    kinds=frozenset({"embedding", "lm_head"}),
    axes=MODEL_AXES,
    summary="vocabulary rows split over tp; all-reduce (embedding) / all-gather logits (head)",
    layout_in=REPLICATE,
    layout_out=REPLICATE,
    splits_weights=True,
    collectives=(
        Collective("all_reduce", MODEL_AXES, "embedding output", _embedding_bytes, backward=None),
        Collective(
            "all_gather", MODEL_AXES, "logits", _logits_bytes,
            phases=frozenset({"decode", "prefill"}),
        ),
        Collective(
            "all_gather", MODEL_AXES, "loss statistics", _loss_stats_bytes,
            backward="all_reduce", backward_bytes_of=_lm_head_input_grad_bytes,
            phases=frozenset({"train"}),
        ),
    ),
    requirements=(divides("vocab"),),
)
