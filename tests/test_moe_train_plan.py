"""Expert parallelism in training plans: the backward terms of `ep`, `ep_dispatch` and `tp_ep`
against hand-computed values, and the ILP's choice for Mixtral-8x7B training.

Mixtral-8x7B's MoE block: H = 4096, F = 14336, E = 8 experts, top-2, no shared experts.
Workload: batch 16 × 4096 tokens, bf16, AdamW, on dp4 × tp4 (16 H100s).
* tokens per dp replica R = 16 / 4 · 4096 = 16384; per tp rank under ep_dispatch 4096;
* a token's 2 experts lie on 4·(1 − (3/4)²) = 1.75 distinct ranks on average, so the dispatch
  all-to-all sends 4096 · 1.75 · 4096 · 2 B = 58,720,256 B per rank, and so does the combine;
  a training step adds the adjoint of each (the same bytes back), recomputation the forward
  pair once more: per step 4 · 56 MiB = 224 MiB (6 · 56 MiB recomputed);
* ep's combine all-reduces R · H · 2 B = 134,217,728 B, once in forward, once in backward;
* each GPU holds E/4 = 2 experts: 3 · 4096 · 14336 · 2 = 352,321,536 expert parameters and
  the 4096 · 8 = 32,768 router parameters; their gradients (704,708,608 B) are all-reduced
  over dp only (level 0); the router's (65,536 B) also over tp (every tp rank holds it whole).
"""

from __future__ import annotations

import pytest

from cost_models import CostModel, load_hardware
from ir.mesh import MODEL_AXES, Mesh
from ir.workload import Workload
from passes.parallelize.context import PlanContext
from passes.parallelize.pricing import price
from passes.parallelize.strategies import BY_NAME
from passes.parallelize.training import BACKWARD_FACTOR
from planner.api import make_plan
from tests.conftest import EXAMPLES

H100 = load_hardware("h100-sxm")
MIXTRAL = str(EXAMPLES / "mixtral.py")
DISPATCH_BYTES = 58_720_256  # 7168 rows of 4096 bf16
ROUTING_WEIGHT_BYTES = 28_672  # their 2 routing weights, bf16
COMBINE_ALL_REDUCE_BYTES = 134_217_728
PARAMS_PER_GPU = 352_321_536 + 32_768
ROUTER_GRAD_BYTES = 65_536


def _moe(load):
    graph = load(MIXTRAL, preset="mixtral-8x7b").graph
    return next(b for b in graph.blocks if b.kind == "moe")


def _ctx(kind: str) -> PlanContext:
    wl = Workload(kind=kind, batch=16, seq=4096, optimizer="adamw")
    return PlanContext(workload=wl, cost=CostModel(hardware=H100), mesh=Mesh.of(dp=4, tp=4))


def test_dispatch_training_prices_adjoint_all_to_alls_and_dp_only_expert_grads(load):
    block = _moe(load)
    train, prefill = _ctx("train"), _ctx("prefill")
    one_way = train.collective_s("all_to_all", DISPATCH_BYTES, MODEL_AXES)
    assert one_way > 0
    fwd = price(block, BY_NAME["ep_dispatch"], prefill)
    assert fwd.comm_s["all_to_all:tp:dispatch"] == pytest.approx(one_way)
    t = price(block, BY_NAME["ep_dispatch"], train, zero=0, recompute=0)
    # forward + its adjoint in backward; training packs the routing weights (7168 rows × k 2,
    # bf16) with the dispatched rows
    packed = train.collective_s("all_to_all", DISPATCH_BYTES + ROUTING_WEIGHT_BYTES, MODEL_AXES)
    assert t.comm_s["all_to_all:tp:dispatch"] == pytest.approx(2 * packed)
    assert t.comm_s["all_to_all:tp:combine"] == pytest.approx(2 * one_way)
    # the counts and expert ids go forward only
    assert t.comm_s["all_to_all:tp:routing"] == train.collective_s("all_to_all", 7168 * 2 * 8, MODEL_AXES)
    r = price(block, BY_NAME["ep_dispatch"], train, zero=0, recompute=1)
    assert r.comm_s["all_to_all:tp:dispatch"] == pytest.approx(3 * packed)  # recompute re-sends
    # expert + router gradients over dp only; the router's also over tp
    assert t.comm_s["all_reduce:grads"] == pytest.approx(
        train.collective_s("all_reduce", PARAMS_PER_GPU * 2, "dp"))
    assert t.comm_s["all_reduce:grads_tp"] == pytest.approx(
        train.collective_s("all_reduce", ROUTER_GRAD_BYTES, MODEL_AXES))
    assert t.memory["weights"] == pytest.approx(PARAMS_PER_GPU * 2)
    assert t.memory["optimizer"] == pytest.approx(PARAMS_PER_GPU * 12)  # fp32 m, v, master
    # backward 2× forward: compute is 3× the forward plus the overlapped collectives' drag
    assert t.compute_s >= (1 + BACKWARD_FACTOR) * fwd.compute_s
    assert t.compute_s < (1 + BACKWARD_FACTOR) * fwd.compute_s * 1.3
    assert r.memory["activations"] < t.memory["activations"] / 5
    # ZeRO over the experts' own replica group (dp = 4): level 3 quarters weights and grads
    z3 = price(block, BY_NAME["ep_dispatch"], train, zero=3, recompute=0)
    assert z3.memory["weights"] == pytest.approx(PARAMS_PER_GPU * 2 / 4)
    assert z3.memory["gradients"] == pytest.approx(PARAMS_PER_GPU * 2 / 4)
    assert "reduce_scatter:grads" in z3.comm_s and "all_reduce:grads" not in z3.comm_s


def test_replicated_stream_ep_pays_its_all_reduce_twice(load):
    block = _moe(load)
    train = _ctx("train")
    one = train.collective_s("all_reduce", COMBINE_ALL_REDUCE_BYTES, MODEL_AXES)
    for name in ("ep", "tp_ep"):
        t = price(block, BY_NAME[name], train, zero=0, recompute=0)
        assert t.comm_s["all_reduce:tp"] == pytest.approx(2 * one), name
        assert t.memory["activations"] > 0 and t.memory["kv_cache"] == 0


def test_mixtral_training_plan_uses_expert_parallelism_with_backward_terms(load):
    """47B parameters with AdamW (16 B/param) need ~16 H100s; the plan splits the experts and
    its MoE blocks carry the backward all-to-alls / all-reduces and dp gradient terms."""
    run = make_plan(load(MIXTRAL, preset="mixtral-8x7b"), hardware="h100-sxm", gpus=16,
                    workload=Workload(kind="train", batch=16, seq=4096, optimizer="adamw"))
    plan = run.plan
    assert plan.memory["per_gpu_bytes"] <= plan.memory["capacity_bytes"]
    moe = [b for b in plan.blocks if b.kind == "moe"]
    assert moe and {b.strategy for b in moe} <= {"ep", "ep_dispatch", "tp_ep"}
    b = moe[0]
    ctx = PlanContext(workload=Workload(kind="train", batch=16, seq=4096, optimizer="adamw"),
                      cost=CostModel(hardware=H100), mesh=Mesh.of(**{k: v for k, v in plan.mesh.items() if v > 1}))
    times = 2 + int(b.extras["recompute"])  # forward (+ recomputed forward) + backward adjoint
    label = ctx.axes_label(MODEL_AXES)
    tokens = 16 // plan.mesh["dp"] * 4096
    if b.strategy == "ep_dispatch":
        n = ctx.group_size(MODEL_AXES)
        rows = tokens // n * n * (1 - (1 - 1 / n) ** 2)
        one = ctx.collective_s("all_to_all", rows * 4096 * 2, MODEL_AXES)
        packed = ctx.collective_s("all_to_all", rows * (4096 + 2) * 2, MODEL_AXES)  # + routing weights
        assert b.comm_s[f"all_to_all:{label}:dispatch"] == pytest.approx(times * packed)
        assert b.comm_s[f"all_to_all:{label}:combine"] == pytest.approx(times * one)
    else:
        one = ctx.collective_s("all_reduce", tokens * 4096 * 2, MODEL_AXES)
        assert b.comm_s[f"all_reduce:{label}"] == pytest.approx(times * one)
    assert {"all_reduce:grads", "reduce_scatter:grads"} & set(b.comm_s)  # expert grads over dp


def test_tiny_moe_training_plan_solves(load):
    """Tiny Mixtral (kilobytes of state, fractional activation bytes) on four 80 GiB GPUs:
    the memory limit in the integer program's units once overflowed CP-SAT's int64."""
    run = make_plan(load(MIXTRAL, experts="8"), hardware="h100-sxm", gpus=4,
                    workload=Workload(kind="train", batch=4, seq=8),
                    force=["layers.*.moe=ep_dispatch(tp=4)"])
    assert {b.strategy for b in run.plan.blocks if b.kind == "moe"} == {"ep_dispatch"}
    assert run.plan.solver["status"] == "OPTIMAL"
