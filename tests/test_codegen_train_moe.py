"""Expert-parallel training in the generated program: `ep`, `ep_dispatch` and `tp_ep` MoE
blocks train exactly — loss, every gradient (expert, router, shared-expert and dense weights)
and every updated weight after each of 3 optimizer steps, against the single-process model
(the rules of tests/test_codegen_train.py: loss within the forward tolerance, gradients and
weights within 1e-4 of the tensor's largest entry; AdamW runs in float64, SGD in float32).

What has to be right for that: the expert kernels differentiate through the routing gather /
scatter; `ep_dispatch`'s uneven all-to-all carries each token row with its routing weights
and its backward returns their gradients to the tokens' owners (AllToAllRows); the combine
reduction's backward runs on every rank even when none of a rank's experts got a token
(skewed DeepSeek routing); expert weights (split over kvp×tp) reduce their gradients over dp
only, the router and shared experts over the model axes that hold them whole. The ranks run
as threads (threaded process group); one case launches torchrun.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from planner.verify_runner import judge, run_threaded, write_run_plan
from tests.test_codegen_moe import DEEPSEEK_ARGS, DP_EP, EP, MIXTRAL_ARGS, TP_EP, _graph, moe_plan
from tests.test_codegen_train import F64, assert_exact

TRAIN = {"kind": "train", "batch": 4, "seq": 8, "context": 0, "optimizer": "adamw"}
SGD = ["--optimizer", "sgd"]
ARGV = ["--verify", "--backend", "gloo", "--workload", "train", "--batch", "4", "--seq", "8", "--steps", "3"]
STRATEGIES = {"ep": EP, "ep_dispatch": DP_EP, "tp_ep": TP_EP, "replicate": {}}
MODELS = {"mixtral": ("mixtral.py", MIXTRAL_ARGS), "deepseek": ("deepseek.py", DEEPSEEK_ARGS)}


def moe_train(tmp_path, model: str, mesh: dict[str, int], moe: str, recompute: frozenset[str] = frozenset()):
    example, args = MODELS[model]
    graph = _graph(example, args)
    plan = moe_plan(graph, mesh, STRATEGIES[moe], TRAIN)
    if recompute:
        plan = dataclasses.replace(plan, blocks=[
            dataclasses.replace(b, extras={**b.extras, "zero": 0, "recompute": int(b.kind in recompute)})
            for b in plan.blocks
        ])
    return plan, write_run_plan(graph, plan, tmp_path)


CASES = [
    # model, mesh, MoE strategy, extra program flags, tolerance
    ("mixtral", {"tp": 2}, "ep", SGD, 1e-4),
    ("mixtral", {"kvp": 2, "tp": 2}, "ep", F64, 1e-9),
    ("mixtral", {"tp": 2}, "ep_dispatch", F64, 1e-9),
    ("mixtral", {"kvp": 2, "tp": 2}, "ep_dispatch", SGD, 1e-4),
    ("mixtral", {"tp": 2}, "tp_ep", SGD, 1e-4),
    ("mixtral", {"kvp": 2, "tp": 2}, "tp_ep", F64, 1e-9),
    ("mixtral", {"dp": 2}, "replicate", F64, 1e-9),
    # shared experts, group-limited routing skewed so some ranks' experts get no token
    ("deepseek", {"tp": 2}, "ep", F64, 1e-9),
    ("deepseek", {"tp": 4}, "ep_dispatch", F64, 1e-9),
    ("deepseek", {"kvp": 2, "tp": 2}, "tp_ep", F64, 1e-9),
]


@pytest.mark.parametrize(
    ("model", "mesh", "moe", "extra", "tol"), CASES,
    ids=[f"{m}-{'x'.join(f'{k}{v}' for k, v in mesh.items())}-{s}-{'f64' if e is F64 else 'sgd'}"
         for m, mesh, s, e, _ in CASES],
)
def test_expert_parallel_training_is_exact(model, mesh, moe, extra, tol, tmp_path):
    plan, program = moe_train(tmp_path, model, mesh, moe)
    results = run_threaded(program, plan.world_size, [*ARGV, *extra])
    assert_exact(results, tol=tol)
    # each rank holds its experts only (weight bytes as the plan says)
    report = judge(plan, results, plan.world_size)
    assert report.memory_ok, report.problems


@pytest.mark.parametrize("zero", [2, 3])
def test_expert_weights_shard_over_dp_only(zero, tmp_path):
    """dp2 × tp2: expert weights split over tp, their gradients and optimizer state sharded
    over their own replica group (dp) at levels 2 and 3 — exact, and each rank's optimizer
    state is half that of level 0."""
    plan, program = moe_train(tmp_path, "mixtral", {"dp": 2, "tp": 2}, "ep_dispatch" if zero == 2 else "ep")
    results = run_threaded(program, plan.world_size, [*ARGV, "--zero", str(zero), *F64])
    assert_exact(results, tol=1e-9)
    assert all(r["zero_levels"] == [zero] for r in results)
    full_params = results[0]["param_bytes"] * (2 if zero == 3 else 1)
    assert results[0]["optimizer_bytes"] == pytest.approx(2 * full_params / 2, rel=0.02)


def test_recomputed_moe_reruns_its_dispatch_in_backward(tmp_path):
    """DeepSeek MoE blocks (dispatch, experts, combine, shared experts) recomputed: the
    counts exchange and both all-to-alls run again inside backward, on every rank in the
    same order."""
    plan, program = moe_train(tmp_path, "deepseek", {"tp": 2}, "ep_dispatch", frozenset({"moe"}))
    assert program.read_text().count("(recomputed in backward)") == 2  # 2 MoE layers
    results = run_threaded(program, plan.world_size, [*ARGV, *F64])
    assert_exact(results, tol=1e-9)


def test_planted_dispatch_without_gradient_return_is_caught(tmp_path):
    """AllToAllRows's backward replaced by zeros (the dispatch treated as a constant): the
    routing weights' and the tokens' gradients no longer reach the router and the layers
    below, and the comparison must fail."""
    plan, program = moe_train(tmp_path, "mixtral", {"tp": 2}, "ep_dispatch")
    text = program.read_text()
    planted, count = re.subn(
        r"dist\.all_to_all_single\(out, grad\.contiguous\(\), ctx\.send, ctx\.recv, group=ctx\.group\)",
        "dist.all_to_all_single(out, grad.contiguous(), ctx.send, ctx.recv, group=ctx.group); out.zero_()",
        text,
    )
    assert count == 1
    program.write_text(planted)
    results = run_threaded(program, plan.world_size, [*ARGV, *SGD])
    assert results[0]["ok"] is False and results[0]["grad_rel_err"] > 0.01


def test_router_bias_buffer_is_read_not_trained(tmp_path):
    """DeepSeek's router score bias is a buffer: the program reads it in the forward and
    neither trains nor reports it as a weight."""
    plan, program = moe_train(tmp_path, "deepseek", {"tp": 2}, "ep")
    text = program.read_text()
    assert "'fqn': 'model.layers.1.mlp.gate.e_score_correction_bias'" in text
    assert re.search(r"e_score_correction_bias', [^\n]*'buffer': True", text)
    assert re.search(r"'model\.layers\.1\.mlp\.experts\.gate_up_proj', [^\n]*'buffer': False", text)


@pytest.mark.slow
def test_dispatch_training_under_torchrun(tmp_path):
    """The uneven all-to-all dispatch and its backward on real gloo processes: DeepSeek-like
    (skewed routing, shared experts), 2 ranks, 3 AdamW steps in float64."""
    from planner.verify_runner import run_torchrun

    plan, program = moe_train(tmp_path, "deepseek", {"tp": 2}, "ep_dispatch")
    results = run_torchrun(program, 2, [*ARGV, *F64])
    assert_exact(results, tol=1e-9)


def test_level3_gathers_line_up_when_a_rank_has_idle_experts(tmp_path):
    """dp2 × tp2 at level 3 with DeepSeek's skewed routing, so on some rank some local
    experts get no token: backward gathers a level-3 weight again where an op saved it, so
    every rank must run the same expert ops (an idle expert runs on no rows) — otherwise one
    dp rank issues an all-gather its peer never does, and the ranks hang."""
    plan, program = moe_train(tmp_path, "deepseek", {"dp": 2, "tp": 2}, "ep")
    results = run_threaded(program, plan.world_size, [*ARGV, "--zero", "3", *F64])
    assert_exact(results, tol=1e-9)
    assert all(r["zero_levels"] == [3] and r["peak_gathered_bytes"] > 0 for r in results)
