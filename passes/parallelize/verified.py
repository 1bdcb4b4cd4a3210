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
    # tp also for eager (matmul, softmax, matmul) attention and fused q|k|v / gate|up
    # projections: Gemma-2, Phi-3, GPT-NeoX in tests/test_hf_models.py
    "tp": frozenset({"attention", "mlp"}),
    "tp_sp": frozenset({"attention", "mlp", "norm"}),
    "dp": frozenset({"attention", "mlp", "norm", "embedding", "lm_head"}),
    "vocab": frozenset({"embedding", "lm_head"}),
    # GQA attention in decode (tests/test_codegen_helix.py), latent attention with TPA = 1
    # and an ep FFN (tests/test_codegen_moe.py)
    "helix": frozenset({"attention"}),
    # GQA attention in prefill (tests/test_codegen_cp.py)
    "cp_pass_kv": frozenset({"attention"}),
    "cp_pass_q": frozenset({"attention"}),
    # MoE strategies also for transformers' Mixtral and DeepSeek-V3, prefill and decode
    # (grouped-mm experts; tests/test_hf_models.py, tests/test_hf_decode_moe.py)
    # experts over kvp×tp, replicated stream (tests/test_codegen_moe.py)
    "ep": frozenset({"moe"}),
    # batch split over kvp×tp with all-to-all dispatch/combine (tests/test_codegen_moe.py)
    "ep_dispatch": frozenset({"moe"}),
    # experts over kvp, FFN columns over tp, incl. beside Helix (tests/test_codegen_moe.py)
    "tp_ep": frozenset({"moe"}),
}


# Training (forward, loss, backward, gradient reduction, optimizer step; each dp sharding
# level) verified per strategy and block kind: tests/test_codegen_train.py; MoE blocks
# (Mixtral, and DeepSeek with shared experts beside latent attention under tp or dp) in
# tests/test_codegen_train_moe.py.
VERIFIED_TRAINING_KINDS: dict[str, frozenset[str]] = {
    "replicate": frozenset({"embedding", "attention", "mlp", "moe", "norm", "lm_head", "other"}),
    "tp": frozenset({"attention", "mlp"}),
    "tp_sp": frozenset({"attention", "mlp", "norm"}),
    "dp": frozenset({"attention", "mlp", "norm", "embedding", "lm_head"}),
    "vocab": frozenset({"embedding", "lm_head"}),
    # ring attention with its ring backward, cp alone, cp × tp, dp × cp, balanced labels
    # (tests/test_codegen_cp_train.py)
    "cp_pass_kv": frozenset({"attention"}),
    "cp_pass_q": frozenset({"attention"}),
    "ep": frozenset({"moe"}),
    "ep_dispatch": frozenset({"moe"}),
    "tp_ep": frozenset({"moe"}),
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
    # latent attention split by batch (dp), heads (tp, latent cache replicated) or, in
    # decode, the latent cache's sequence (helix, TPA = 1) is verified in
    # tests/test_codegen_moe.py; transformers' DeepSeek-V3 form (latent cached as one KV
    # head, run by the ordinary layout rules) under replicate, dp and tp in
    # tests/test_hf_models.py and tests/test_hf_decode_moe.py (helix: not applicable to it,
    # strategies/helix.py)
    if "kv_lora_rank" in block.dims and strategy not in ("replicate", "dp", "tp", "helix"):
        return (
            f"{strategy} for latent (MLA) attention is not yet verified end to end "
            "(pass --allow-unverified to plan with it anyway)"
        )
    return None


def token_split_reason(blocks: list[Block]) -> str | None:
    """A cp mesh axis splits every block's new tokens; MoE routing is lowered by gathering the
    tokens over cp first (the result is exact, but the cost model prices local tokens and
    not that gather), so such meshes are not offered for MoE models by default."""
    for b in blocks:
        if b.kind == "moe":
            return (
                f"a cp axis splits the tokens of every block, and {b.kind} blocks like {b.name} "
                "gather them back over cp (not priced); --allow-unverified to plan anyway"
            )
    return None


def batch_split_reason(blocks: list[Block]) -> str | None:
    """A dp mesh axis splits every block's batch; blocks whose lowering under a split batch is
    not verified (latent attention) rule such meshes out. MoE blocks run the top-k expert
    kernel on the replica's tokens (replicate and ep verified under dp,
    tests/test_codegen_moe.py)."""
    for b in blocks:
        if "kv_lora_rank" in b.dims:
            return (
                f"a dp axis splits the batch of every block, and {b.kind} blocks like {b.name} "
                "are not yet verified under a split batch (--allow-unverified to plan anyway)"
            )
    return None
