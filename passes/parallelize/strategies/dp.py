"""Data parallel over the tp axis (attention data parallelism): the replica's batch is split
over tp ranks; each holds full weights and only its own sequences' KV cache."""

from passes.parallelize.strategy import MODEL_AXES, SHARD_BATCH, Strategy, batch_divides

DP = Strategy(
    name="dp",
    kinds=frozenset({"attention", "mlp", "moe", "norm", "embedding", "lm_head"}),
    axes=MODEL_AXES,
    summary="batch split over tp; weights replicated, KV cache of own sequences only",
    layout_in=SHARD_BATCH,
    layout_out=SHARD_BATCH,
    splits_batch=True,
    requirements=(batch_divides(),),
)
