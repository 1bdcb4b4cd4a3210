"""Which (strategy, block) pairs the generated program is verified for.

A strategy the planner can emit must have been run under torchrun/gloo (or the threaded
process group) and matched the single-process model; until then it is offered only when the
user asks (`--allow-unverified`, or naming it in `--strategies` / `--force`). Each entry names
the tests that verify it.
"""

from __future__ import annotations

from ir.graph import Block

# strategy -> block kinds verified (tests/test_codegen.py, tests/test_codegen_torchrun.py,
# tests/test_codegen_helix.py)
VERIFIED_KINDS: dict[str, frozenset[str]] = {
    "replicate": frozenset({"embedding", "attention", "mlp", "moe", "norm", "lm_head", "other"}),
    "tp": frozenset({"attention", "mlp"}),
    "tp_sp": frozenset({"attention", "mlp", "norm"}),
    "dp": frozenset({"attention", "mlp", "norm", "embedding", "lm_head"}),
    "vocab": frozenset({"embedding", "lm_head"}),
    # GQA attention in decode (tests/test_codegen_helix.py); latent attention is excluded below
    "helix": frozenset({"attention"}),
}


# Training (forward, loss, backward, gradient reduction, optimizer step; each dp sharding
# level) verified per strategy and block kind: tests/test_codegen_train.py.
VERIFIED_TRAINING_KINDS: dict[str, frozenset[str]] = {
    "replicate": frozenset({"embedding", "attention", "mlp", "norm", "lm_head", "other"}),
    "tp": frozenset({"attention", "mlp"}),
    "tp_sp": frozenset({"attention", "mlp", "norm"}),
    "dp": frozenset({"attention", "mlp", "norm", "embedding", "lm_head"}),
    "vocab": frozenset({"embedding", "lm_head"}),
}


def unverified_reason(strategy: str, block: Block, workload: str | None = None) -> str | None:
    """None when the pair is verified (for training: its training program); else why it is
    not offered by default."""
    if workload == "train":
        kinds = VERIFIED_TRAINING_KINDS.get(strategy, frozenset())
        if block.kind not in kinds:
            return (
                f"training {block.kind} blocks under {strategy} is not yet verified end to end "
                "(pass --allow-unverified to plan with it anyway)"
            )
    kinds = VERIFIED_KINDS.get(strategy, frozenset())
    if block.kind not in kinds:
        return (
            f"{strategy} for {block.kind} blocks is not yet verified end to end "
            "(pass --allow-unverified to plan with it anyway)"
        )
    if "kv_lora_rank" in block.dims and strategy != "replicate":
        return (
            f"{strategy} for latent (MLA) attention is not yet verified end to end "
            "(pass --allow-unverified to plan with it anyway)"
        )
    return None


def batch_split_reason(blocks: list[Block]) -> str | None:
    """A dp mesh axis splits every block's batch; blocks whose lowering under a split batch is
    not verified (MoE routing, latent attention) rule such meshes out."""
    for b in blocks:
        if b.kind == "moe" or "kv_lora_rank" in b.dims:
            return (
                f"a dp axis splits the batch of every block, and {b.kind} blocks like {b.name} "
                "are not yet verified under a split batch (--allow-unverified to plan anyway)"
            )
    return None
