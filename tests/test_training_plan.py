"""Training plans: dp sharding levels, recomputation, backward collectives, vocab loss."""

from __future__ import annotations

import itertools

import pytest

from cost_models import CostModel, load_hardware
from ir.errors import InfeasiblePlanError, InputError
from ir.mesh import Mesh
from ir.workload import Workload
from passes.parallelize.build import build_problem, hidden_edges
from passes.parallelize.context import PlanContext
from passes.parallelize.ilp import plan_time_s
from passes.parallelize.pricing import price
from passes.parallelize.search import mesh_candidates, search, workspace_bytes
from passes.parallelize.strategies import BY_NAME
from planner.api import make_plan
from planner.report import explain_text
from tests.conftest import EXAMPLES

H100 = load_hardware("h100-sxm")
LLAMA = str(EXAMPLES / "llama.py")


def _levels(plan) -> set[int]:
    return {int(b.extras["zero"]) for b in plan.blocks if b.kind in ("attention", "mlp")}


def test_405b_training_on_64_h100_needs_sharded_state(load):
    """Llama-3.1-405B, SGD (bf16 weights + bf16 grads + fp32 master = 8 bytes/param, 3.2 TB)
    fits 64 × 80 GiB only when gradients or parameters are sharded over dp; with levels 0-1
    it is infeasible, and AdamW (16 bytes/param, 6.5 TB > 5.1 TB) fits no level."""
    loaded = load(LLAMA, preset="llama3.1-405b")
    wl = Workload(kind="train", batch=16, seq=2048, optimizer="sgd")
    run = make_plan(loaded, hardware="h100-sxm", gpus=64, workload=wl)
    plan = run.plan
    assert plan.mesh["dp"] > 1
    assert max(_levels(plan)) >= 2
    assert plan.memory["per_gpu_bytes"] <= plan.memory["capacity_bytes"]
    text = explain_text(plan)
    assert "zero level **3**" in text or "zero level **2**" in text
    # the message suggests what is not set already
    with pytest.raises(InfeasiblePlanError, match="does not fit on 64 GPUs") as levels01:
        make_plan(loaded, hardware="h100-sxm", gpus=64,
                  workload=Workload(kind="train", batch=16, seq=2048, optimizer="sgd",
                                    zero_levels=(0, 1)))
    assert "--zero 0,1,2,3" in str(levels01.value) and "--optimizer sgd" not in str(levels01.value)
    with pytest.raises(InfeasiblePlanError, match="does not fit on 64 GPUs") as adamw:
        make_plan(loaded, hardware="h100-sxm", gpus=64,
                  workload=Workload(kind="train", batch=16, seq=2048, optimizer="adamw"))
    assert "--optimizer sgd" in str(adamw.value) and "--zero" not in str(adamw.value)
    assert "--recompute" not in str(adamw.value)


def test_small_model_keeps_everything_replicated(load):
    """A model far below capacity: sharding only adds communication, so level 0 (plain
    all-reduce) everywhere, and no recomputation."""
    run = make_plan(load(LLAMA), hardware="h100-sxm", gpus=4,
                    workload=Workload(kind="train", batch=8, seq=64), force=[],
                    strategies=frozenset({"replicate", "dp"}))
    assert {int(b.extras["zero"]) for b in run.plan.blocks} == {0}
    assert {int(b.extras["recompute"]) for b in run.plan.blocks} == {0}


def test_recompute_trades_time_for_activation_memory(load):
    graph = load(LLAMA, preset="llama3-8b").graph
    block = next(b for b in graph.blocks if b.kind == "mlp")
    wl = Workload(kind="train", batch=8, seq=4096)
    ctx = PlanContext(workload=wl, cost=CostModel(hardware=H100), mesh=Mesh.of(dp=8))
    keep = price(block, BY_NAME["replicate"], ctx, zero=0, recompute=0)
    again = price(block, BY_NAME["replicate"], ctx, zero=0, recompute=1)
    assert again.compute_s > keep.compute_s * 1.3  # one more forward on top of 3
    assert again.memory["activations"] < keep.memory["activations"] / 5


def test_zero_levels_shard_state_and_change_collectives(load):
    """Per level, which of weights / gradients / optimizer state divide by dp, and which
    dp collectives run."""
    graph = load(LLAMA, preset="llama3-8b").graph
    block = next(b for b in graph.blocks if b.kind == "mlp")
    wl = Workload(kind="train", batch=8, seq=1024, optimizer="adamw")
    ctx = PlanContext(workload=wl, cost=CostModel(hardware=H100), mesh=Mesh.of(dp=8))
    p = block.param_count
    by_level = {z: price(block, BY_NAME["replicate"], ctx, zero=z, recompute=0) for z in range(4)}
    expected = {  # (weights, gradients, optimizer) bytes; AdamW on bf16: 12 bytes/param
        0: (2 * p, 2 * p, 12 * p),
        1: (2 * p, 2 * p, 12 * p / 8),
        2: (2 * p, 2 * p / 8, 12 * p / 8),
        3: (2 * p / 8, 2 * p / 8, 12 * p / 8),
    }
    for z, (w, g, o) in expected.items():
        m = by_level[z].memory
        assert (m["weights"], m["gradients"], m["optimizer"]) == pytest.approx((w, g, o))
    assert set(by_level[0].comm_s) == {"all_reduce:grads"}
    assert set(by_level[1].comm_s) == {"all_reduce:grads", "all_gather:params"}
    assert set(by_level[2].comm_s) == {"reduce_scatter:grads", "all_gather:params"}
    assert set(by_level[3].comm_s) == {
        "reduce_scatter:grads", "all_gather:params", "all_gather:params_bwd"
    }


def test_backward_transposes_forward_collectives(load):
    """TP+SP: the forward's all-gather and reduce-scatter each reappear in backward (the
    transpose of one is the other), so training pays each twice; vocab-parallel loss never
    gathers logits in training: a [tokens, 3] fp32 statistics gather and, in backward, its
    adjoint (a reduce-scatter of the statistics' gradient, as the program's AllGather runs
    it), far below the inference logits gather; the vocab-parallel embedding's all-reduce
    is all-reduced again in backward (the program's AllReduceSum)."""
    graph = load(LLAMA, preset="llama3-8b").graph
    attn = next(b for b in graph.blocks if b.kind == "attention")
    head = next(b for b in graph.blocks if b.kind == "lm_head")
    mesh = Mesh.of(tp=8)
    train = PlanContext(workload=Workload(kind="train", batch=8, seq=1024),
                        cost=CostModel(hardware=H100), mesh=mesh)
    prefill = PlanContext(workload=Workload(kind="prefill", batch=8, seq=1024),
                          cost=CostModel(hardware=H100), mesh=mesh)
    t = price(attn, BY_NAME["tp_sp"], train, zero=0, recompute=0)
    f = price(attn, BY_NAME["tp_sp"], prefill)
    assert t.comm_s["all_gather:tp"] == pytest.approx(2 * f.comm_s["all_gather:tp"], rel=0.3)
    assert t.comm_s["reduce_scatter:tp"] == pytest.approx(2 * f.comm_s["reduce_scatter:tp"],
                                                          rel=0.3)
    r = price(attn, BY_NAME["tp_sp"], train, zero=0, recompute=1)
    assert r.comm_s["all_gather:tp"] > t.comm_s["all_gather:tp"]  # recompute re-gathers
    vocab_train = price(head, BY_NAME["vocab"], train, zero=0, recompute=0)
    logits_gather = train.collective_s(
        "all_gather", 8 * 1024 * head.dims["vocab"] * train.act_bytes, ("tp",)
    )
    stats = 8 * 1024 * 3 * 4.0
    assert vocab_train.comm_s == {
        "all_gather:tp": train.collective_s("all_gather", stats, ("tp",)),
        "reduce_scatter:tp": train.collective_s("reduce_scatter", stats, ("tp",)),
    }
    assert sum(vocab_train.comm_s.values()) < logits_gather / 10
    embedding = next(b for b in graph.blocks if b.kind == "embedding")
    hidden = 8 * 1024 * embedding.dims["hidden"] * train.act_bytes
    embedding_train = price(embedding, BY_NAME["vocab"], train, zero=0, recompute=0)
    assert embedding_train.comm_s["all_reduce:tp"] == 2 * train.collective_s("all_reduce", hidden, ("tp",))


def test_training_decisions_match_brute_force(load):
    """Every (mesh, per-group strategy × zero × recompute) priced directly; the ILP finds
    the same optimum."""
    graph = load(str(EXAMPLES / "gpt2.py")).graph
    wl = Workload(kind="train", batch=8, seq=64)
    hw = H100
    allowed = frozenset({"replicate"})
    result = search(graph, wl, hw, 4, reserve_bytes=0.0, strategies=allowed)
    best, widest = None, 0
    for mesh in mesh_candidates(4):
        ctx = PlanContext(workload=wl, cost=CostModel(hardware=hw), mesh=mesh)
        fixed = workspace_bytes(graph, wl, mesh, ctx.act_bytes, 0.0)
        built = build_problem(
            graph, ctx, capacity_bytes=hw.hbm_capacity_bytes, fixed_bytes=fixed, force=[],
            time_budget_s=None, share_groups=True, edges=hidden_edges(graph), allowed=allowed,
        )
        groups: dict[str, list[str]] = {}
        options: dict[str, tuple] = {}
        for b in built.problem.blocks:
            groups.setdefault(b.group, []).append(b.name)
            options[b.group] = b.options
        names = sorted(groups)
        widest = max(widest, *(len(v) for v in options.values()))
        for combo in itertools.product(*(options[g] for g in names)):
            mem = fixed + sum(o.memory_bytes * len(groups[g]) for g, o in zip(names, combo, strict=True))
            if mem > hw.hbm_capacity_bytes:
                continue
            assignment = {blk: o.name for g, o in zip(names, combo, strict=True) for blk in groups[g]}
            t = plan_time_s(built.problem, assignment)
            if best is None or t < best:
                best = t
    assert widest == 8  # 4 levels × recompute on a mesh with a dp axis
    assert result.best.solution.objective_s == pytest.approx(best, rel=1e-6)


def test_zero_levels_are_validated():
    with pytest.raises(InputError, match="zero levels"):
        Workload(kind="train", batch=2, seq=8, zero_levels=(4,))
    with pytest.raises(InputError, match="recompute"):
        Workload(kind="train", batch=2, seq=8, recompute="some")
