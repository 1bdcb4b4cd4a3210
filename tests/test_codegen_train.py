"""The generated program trains: forward, loss, backward through differentiable collectives,
gradient reduction, ZeRO levels over dp, SGD/AdamW, checked against the single-process
model (loss within the forward tolerance; every gradient and every updated weight within
1e-4 of the tensor's largest entry) after each of 3 optimizer steps.

Gradients are reduced in buckets started from gradient hooks while backward runs; level-3
weights are gathered per block, the next block's gathers prefetched, and freed after
(tests/test_codegen_train_prefetch.py checks the prefetch itself). Most cases run the ranks as
threads (threaded process group); two launch torchrun through `helixplan verify`. AdamW cases train in float64 (AdamW turns float32 rounding noise in a
near-zero gradient entry into a full-size update, in the reference as much as in the
program; the SGD cases show float32 agreement)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from planner.verify_runner import run_threaded, write_run_plan
from tests.conftest import ROOT
from tests.test_codegen import ATTN_DP_MLP_SP, REPLICATE, TP, TP_SP, make_plan

TRAIN = {"kind": "train", "batch": 4, "seq": 8, "context": 0, "optimizer": "adamw"}
F64 = ["--dtype", "float64"]


def train_run(load, tmp_path, model, mesh, strategies, extra=(), *, zero_of=None,
              recompute=frozenset()):
    graph = load(str(ROOT / "examples" / f"{model}.py")).graph
    plan = make_plan(graph, mesh, strategies, TRAIN)
    if zero_of or recompute:
        zero_of = zero_of or {}
        blocks = [dataclasses.replace(b, extras={"zero": zero_of.get(b.kind, 0),
                                                 "recompute": int(b.kind in recompute)})
                  for b in plan.blocks]
        plan = dataclasses.replace(plan, blocks=blocks)
    program = write_run_plan(graph, plan, tmp_path)
    argv = ["--verify", "--backend", "gloo", "--workload", "train", "--batch", "4", "--seq", "8",
            "--steps", "3", *extra]
    return program, run_threaded(program, plan.world_size, argv)


def assert_exact(results, *, tol=1e-4):
    r0 = results[0]
    assert r0["ok"] is True, r0
    assert r0["steps_checked"] == 3
    assert r0["grad_rel_err"] <= tol and r0["param_rel_err"] <= tol, r0
    assert r0["max_abs_err"] <= 1e-4 * max(1.0, r0["ref_scale"])
    losses = r0["losses"]
    assert len(losses) == 3 and losses[2] < losses[0]  # it learns
    assert all(r["losses"] == losses for r in results)  # every rank saw the same loss


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_dp_each_sharding_level_adamw(load, tmp_path, zero):
    _, results = train_run(load, tmp_path, "llama", {"dp": 2}, REPLICATE,
                           ["--zero", str(zero), *F64])
    assert_exact(results, tol=1e-9)
    assert all(r["zero_levels"] == [zero] for r in results)
    # the whole tiny model fits one 25 MiB bucket of one reduction, started from the hooks
    assert results[0]["grad_buckets"] == 1 and results[0]["grad_buckets_started_in_backward"] == 1
    full = results[0]["param_bytes"]
    if zero == 3:  # each rank stores half of every weight (flattened, padded to even)
        assert all(r["param_bytes"] <= full for r in results)
    opt = [r["optimizer_bytes"] for r in results]
    zero0_opt = 2 * (results[0]["param_bytes"] * (2 if zero == 3 else 1))
    assert opt[0] == pytest.approx(zero0_opt / (2 if zero >= 1 else 1), rel=0.01)


def test_plan_levels_per_block_sgd_float32(load, tmp_path):
    """The plan's own per-block levels (attention 3, MLP 2, norms 1, the rest 0) reach the
    program through ZERO_LEVELS; float32 SGD agrees to ~1e-6."""
    program, results = train_run(
        load, tmp_path, "llama", {"dp": 2}, REPLICATE, ["--optimizer", "sgd"],
        zero_of={"attention": 3, "mlp": 2, "norm": 1},
    )
    assert_exact(results)
    assert results[0]["zero_levels"] == [0, 1, 2, 3]
    assert "'model.layers.0.self_attn.q_proj.weight@dpR': 3" in program.read_text()


def test_tp_with_vocab_parallel_loss_holds_no_full_vocab_logits(load, tmp_path):
    _, results = train_run(load, tmp_path, "llama", {"tp": 2}, TP, F64)
    assert_exact(results, tol=1e-9)
    for r in results:
        assert r["vocab_parallel"] is True
        assert r["full_vocab_tensors"] == 0
        assert r["largest_tensor_bytes"] > 0 and r["largest_tensor_shape"][-1] != 512
    # without the vocab split the same counter sees the full logits
    _, plain = train_run(load, tmp_path / "plain", "llama", {"tp": 2},
                         {"attention": "tp", "mlp": "tp"}, ["--optimizer", "sgd"])
    assert plain[0]["vocab_parallel"] is False and plain[0]["full_vocab_tensors"] > 0


def test_tp_sp_float32_sgd(load, tmp_path):
    _, results = train_run(load, tmp_path, "llama", {"tp": 2}, TP_SP, ["--optimizer", "sgd"])
    assert_exact(results)


def test_batch_split_attention_and_sequence_parallel_mlp(load, tmp_path):
    """Attention batch-split over tp (its weights replicated there, gradients partial per
    rank), MLP token-split: the tp reduction of replicated weights' gradients matters."""
    _, results = train_run(load, tmp_path, "llama", {"tp": 2}, ATTN_DP_MLP_SP, F64)
    assert_exact(results, tol=1e-9)


def test_four_ranks_dp_tp_sp_fsdp(load, tmp_path):
    _, results = train_run(load, tmp_path, "llama", {"dp": 2, "tp": 2}, TP_SP,
                           ["--zero", "3", *F64])
    assert_exact(results, tol=1e-9)
    assert len(results) == 4 and all(r["full_vocab_tensors"] == 0 for r in results)


def test_recomputed_blocks_rerun_their_collectives_in_backward(load, tmp_path):
    """TP+SP attention and MLP recomputed (checkpointed): their all-gathers and
    reduce-scatters run again inside backward, on every rank in the same order."""
    program, results = train_run(load, tmp_path, "llama", {"tp": 2}, TP_SP, F64,
                                 recompute=frozenset({"attention", "mlp"}))
    assert_exact(results, tol=1e-9)
    text = program.read_text()
    assert text.count("(recomputed in backward)") == 4  # 2 layers × (attention, MLP)


def test_gradient_buckets_start_during_backward(load, tmp_path):
    """dp2 × tp2 with every level (attention 3 and recomputed, MLP 2, norms 1, the rest 0)
    and 10 KiB buckets: many buckets, of every reduction (all-reduce over dp then tp for
    the tp-replicated norms; reduce-scatter over dp, then all-reduce over tp), each started
    by the gradient hooks while backward runs, in the same order on every rank."""
    _, results = train_run(load, tmp_path, "llama", {"dp": 2, "tp": 2}, TP_SP, ["--bucket-mb", "0.01", *F64],
                           zero_of={"attention": 3, "mlp": 2, "norm": 1}, recompute=frozenset({"attention"}))
    assert_exact(results, tol=1e-9)
    r0 = results[0]
    assert r0["zero_levels"] == [0, 1, 2, 3] and r0["grad_buckets"] >= 10
    assert all(r["grad_buckets_started_in_backward"] == r0["grad_buckets"] for r in results)


def test_no_overlap_reduces_the_same_buckets_after_backward(load, tmp_path):
    _, results = train_run(load, tmp_path, "llama", {"dp": 2}, REPLICATE,
                           ["--zero", "2", "--bucket-mb", "0.05", "--no-overlap", *F64])
    assert_exact(results, tol=1e-9)
    assert results[0]["grad_buckets"] > 1 and results[0]["grad_buckets_started_in_backward"] == 0


def test_level3_holds_two_gathered_blocks_at_a_time(load, tmp_path):
    """Level 3 frees each gathered weight once the block after next reads its weights, and
    all-gathers it again in backward: at most two blocks' weights are whole at once (the
    running block and the prefetched next one, as the planner's workspace prices), against
    every weight of the model when the gathered weights are kept for backward
    (--keep-gathered). With attention and MLP recomputed (checkpoint inside the saved-tensor
    hooks), the block's recompute gathers them again."""
    graph = load(str(ROOT / "examples" / "llama.py")).graph
    float64 = 8
    sizes = [b.param_count * float64 for b in graph.blocks if b.param_count]
    two_blocks = max(a + b for a, b in zip(sizes, sizes[1:], strict=False))
    every_weight = sum(sizes)
    _, freed = train_run(load, tmp_path / "freed", "llama", {"dp": 2}, REPLICATE, ["--zero", "3", *F64],
                         recompute=frozenset({"attention", "mlp"}))
    _, kept = train_run(load, tmp_path / "kept", "llama", {"dp": 2}, REPLICATE,
                        ["--zero", "3", "--keep-gathered", *F64])
    assert_exact(freed, tol=1e-9)
    assert_exact(kept, tol=1e-9)
    for f, k in zip(freed, kept, strict=True):
        assert 0 < f["peak_gathered_bytes"] <= two_blocks < k["peak_gathered_bytes"]
        assert k["peak_gathered_bytes"] == every_weight
        assert f["peak_step_bytes"] < k["peak_step_bytes"]


def test_gpt2_tied_head_tp(load, tmp_path):
    _, results = train_run(load, tmp_path, "gpt2", {"tp": 2}, TP, ["--optimizer", "sgd"])
    assert_exact(results)


def test_planted_missing_gradient_reduction_is_caught(load, tmp_path):
    """Drop the gradient all-reduce of replicated weights: each rank would update with its
    own share only, and the comparison must fail."""
    graph = load(str(ROOT / "examples" / "llama.py")).graph
    plan = make_plan(graph, {"dp": 2}, REPLICATE, TRAIN)
    program = write_run_plan(graph, plan, tmp_path)
    text = program.read_text()
    planted, count = re.subn(r"dist\.all_reduce\(bucket\.buffer, group=group, async_op=True\)", "None", text)
    assert count == 1
    program.write_text(planted)
    argv = ["--verify", "--backend", "gloo", "--workload", "train", "--batch", "4", "--seq",
            "8", "--steps", "3", "--optimizer", "sgd"]
    results = run_threaded(program, 2, argv)
    assert results[0]["ok"] is False and results[0]["grad_rel_err"] > 0.1


# -- under torchrun, through `helixplan verify` ------------------------------------------


@pytest.mark.slow
def test_verify_cli_trains_planner_plan_on_two_ranks(tmp_path):
    """The planner's own training plan (TP attention, vocab-parallel head), launched by
    `helixplan verify` under torchrun for 3 AdamW steps."""
    from tests.test_codegen_torchrun import verify

    code, out, log = verify(
        str(ROOT / "examples" / "llama.py"), "--nproc", "2", "--workload", "train",
        "--force", "layers.*.attention=tp(tp=2)", "--force", "lm_head=vocab",
        "--out", str(tmp_path),
    )
    assert code == 0, log
    assert out["ok"] is True and out["nproc"] == 2


@pytest.mark.slow
def test_verify_cli_trains_dp2_tp2_with_sharded_state(load, tmp_path):
    """4 ranks, dp2 × tp2, TP+SP blocks and vocab head; the plan shards attention's
    gradients and optimizer state (level 2) and the MLP's optimizer state (level 1)."""
    from tests.test_codegen_torchrun import verify

    graph = load(str(ROOT / "examples" / "llama.py")).graph
    plan = make_plan(graph, {"dp": 2, "tp": 2}, TP_SP, TRAIN)
    levels = {"attention": 2, "mlp": 1}
    plan = dataclasses.replace(plan, blocks=[
        dataclasses.replace(b, extras={"zero": levels.get(b.kind, 0), "recompute": 0})
        for b in plan.blocks
    ])
    plan.save(tmp_path / "plan.json")
    write_run_plan(graph, plan, tmp_path)
    code, out, log = verify(str(tmp_path), "--nproc", "4", "--batch", "4", "--seq", "8")
    assert code == 0, log
    assert out["ok"] is True and out["nproc"] == 4


@pytest.mark.slow
def test_torchrun_level3_with_small_buckets(load, tmp_path):
    """Real gloo (its async work runs on background threads, unlike the threaded test group):
    2 ranks at level 3 with 50 KiB buckets, so reduce-scatters run while backward all-gathers
    freed weights again on the same dp group, at most two buckets in flight."""
    from planner.verify_runner import run_torchrun

    graph = load(str(ROOT / "examples" / "llama.py")).graph
    program = write_run_plan(graph, make_plan(graph, {"dp": 2}, REPLICATE, TRAIN), tmp_path)
    results = run_torchrun(program, 2, ["--verify", "--backend", "gloo", "--workload", "train", "--batch",
                                        "4", "--seq", "8", "--steps", "3", "--zero", "3", "--bucket-mb",
                                        "0.05", *F64])
    assert_exact(results, tol=1e-9)
    r0 = results[0]
    assert r0["grad_buckets"] > 4 and r0["grad_buckets_started_in_backward"] == r0["grad_buckets"]
    assert 0 < r0["peak_gathered_bytes"] < r0["param_bytes"]  # never the whole model at once
