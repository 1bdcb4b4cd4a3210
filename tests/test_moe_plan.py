"""MoE in the planner: the expert-parallel cost terms and the ILP's choice.

Pricing facts checked against hand-computed values; the ILP must pick an expert-parallel
strategy when replicated experts do not fit (Mixtral-8x7B, 93 GB of bf16 weights, on 4
H100s), and the plan's MoE time must grow with the configured load imbalance."""

from __future__ import annotations

import dataclasses

import pytest

from cost_models import CostModel, load_hardware
from ir.errors import InputError
from ir.mesh import Mesh
from ir.workload import Workload
from passes.parallelize.context import PlanContext
from passes.parallelize.search import search
from passes.parallelize.strategies.ep import (
    EP,
    EP_DISPATCH,
    TP_EP,
    active_experts,
    distinct_ranks,
    price_ep,
    price_ep_dispatch,
    price_tp_ep,
)
from tests.conftest import EXAMPLES

H100 = load_hardware("h100-sxm")


def test_expected_counts():
    # one token, top-2 of 8 experts over 4 ranks: P(rank missed) = (3/4)^2
    assert distinct_ranks(4, 2) == pytest.approx(4 * (1 - 0.75**2))
    assert distinct_ranks(1, 8) == pytest.approx(1.0)
    # every expert chosen by one of many tokens; exactly k experts by one token
    assert active_experts(8, 2, 1) == pytest.approx(2.0)
    assert active_experts(256, 8, 10_000) == pytest.approx(256.0)


def _ctx(mesh: dict[str, int], **workload) -> PlanContext:
    wl = Workload(kind="decode", batch=64, seq=1, context=4096, **workload)
    return PlanContext(workload=wl, cost=CostModel(hardware=H100), mesh=Mesh.of(**mesh))


def _moe_block(load):
    graph = load(str(EXAMPLES / "mixtral.py"), preset="mixtral-8x7b").graph
    return graph, next(b for b in graph.blocks if b.kind == "moe")


def test_ep_prices_split_weights_and_skew(load):
    _, block = _moe_block(load)
    d = block.dims
    ctx = _ctx({"tp": 8})
    ep = price_ep(block, ctx)
    expert_bytes = 3 * d["hidden"] * d["ffn"] * d["experts"] / 8 * 2
    router_bytes = d["hidden"] * d["experts"] * 2
    assert ep.memory["weights"] == pytest.approx(expert_bytes + router_bytes)
    assert list(ep.comm_s) == ["all_reduce:tp"]
    skewed = price_ep(block, dataclasses.replace(ctx, workload=dataclasses.replace(ctx.workload, expert_skew=2.0)))
    assert skewed.compute_s > ep.compute_s
    # TP×EP over kvp2×tp4 holds the same expert bytes per GPU as ep over 8
    grid = price_tp_ep(block, _ctx({"kvp": 2, "tp": 4}))
    assert grid.memory["weights"] == pytest.approx(expert_bytes + router_bytes)
    assert list(grid.comm_s) == ["all_reduce:kvp×tp"]
    a2a = price_ep_dispatch(block, ctx)
    assert set(a2a.comm_s) == {f"all_to_all:tp:{part}" for part in ("counts", "routing", "dispatch", "combine")}


def test_expert_skew_is_validated():
    with pytest.raises(InputError, match="expert-skew"):
        Workload(kind="decode", batch=1, seq=1, expert_skew=0.5)


def test_ilp_picks_expert_parallel_when_experts_do_not_fit(load):
    graph, _ = _moe_block(load)
    wl = Workload(kind="decode", batch=8, seq=1, context=4096)
    best = search(graph, wl, H100, 4, verified_only=True).best
    chosen = {s for n, s in best.solution.assignment.items() if ".moe" in n}
    assert chosen and chosen <= {EP.name, EP_DISPATCH.name, TP_EP.name}, chosen
