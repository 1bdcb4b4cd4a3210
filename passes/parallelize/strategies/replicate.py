"""Replicate: every rank of the tp axis runs the whole block on the replica's batch."""

from passes.parallelize.strategy import REPLICATE, Strategy

REPLICATE_STRATEGY = Strategy(
    name="replicate",
    kinds=frozenset({"embedding", "attention", "mlp", "moe", "norm", "lm_head", "other"}),
    axes=(),
    summary="whole block on every rank (weights and KV duplicated over tp)",
    layout_in=REPLICATE,
    layout_out=REPLICATE,
)
