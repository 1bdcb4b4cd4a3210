"""Helix in the planner: when it wins, its constraints, HOP-B as an ILP decision.

Helix is offered by default for GQA attention in decode (verified end to end in
tests/test_codegen_helix.py); baselines here drop it with `strategies=`."""

from __future__ import annotations

import pytest

from cost_models import load_hardware
from ir.errors import InfeasiblePlanError
from ir.workload import Workload
from passes.parallelize.build import ForceRule
from passes.parallelize.search import search
from passes.parallelize.strategies import DEFAULT_STRATEGIES
from tests.conftest import EXAMPLES

WITH_HELIX = DEFAULT_STRATEGIES | {"helix"}
WITHOUT_HELIX = DEFAULT_STRATEGIES - {"helix"}


def _attention_choice(result, layer=0):
    return result.best.built.meaning[result.best.solution.assignment[f"layers.{layer}.attention"]]


def test_helix_wins_long_context_decode(load):
    """Llama-3.1-405B shape, 1M-token context on 64 GB200s: TP alone cannot split the 8 KV
    heads over more than 8 GPUs, so each GPU reads B·1M·(8/8)·256 KV elements per layer;
    Helix splits the sequence as well and reads 1/KVP of that."""
    graph = load(str(EXAMPLES / "llama.py"), preset="llama3.1-405b").graph
    hw = load_hardware("gb200-nvl72")
    wl = Workload(kind="decode", batch=8, seq=1, context=1 << 20, weight_dtype="fp8", kv_dtype="fp8")
    base = search(graph, wl, hw, 64, strategies=WITHOUT_HELIX)
    helix = search(graph, wl, hw, 64, strategies=WITH_HELIX)
    name, extras = _attention_choice(helix)
    assert name == "helix" and helix.best.mesh.size("kvp") > 1
    assert helix.best.solution.objective_s < base.best.solution.objective_s
    assert "hopb" in extras


def test_helix_offered_by_default_for_decode_only(load):
    graph = load(str(EXAMPLES / "llama.py")).graph
    hw = load_hardware("h100-sxm")
    wl = Workload(kind="decode", batch=4, seq=1, context=4096)
    assert "helix" in DEFAULT_STRATEGIES
    default = search(graph, wl, hw, 4)
    assert any(o.mesh.size("kvp") > 1 for o in default.outcomes)
    without = search(graph, wl, hw, 4, strategies=WITHOUT_HELIX)
    assert all(o.mesh.size("kvp") == 1 for o in without.outcomes)
    prefill = Workload(kind="prefill", batch=2, seq=64)
    with pytest.raises(InfeasiblePlanError, match="helix applies to decode"):
        search(graph, prefill, hw, 4, force=[ForceRule.parse("layers.*.attention=helix")])


def test_forced_helix_degrees_and_hopb(load):
    graph = load(str(EXAMPLES / "llama.py")).graph
    hw = load_hardware("h100-sxm")
    wl = Workload(kind="decode", batch=8, seq=1, context=8192)
    r = search(graph, wl, hw, 4, force=[ForceRule.parse("layers.*.attention=helix(kvp=2,tpa=2,hopb=4)")])
    assert r.best.mesh.size("kvp") == 2 and r.best.mesh.size("tp") == 2
    assert _attention_choice(r) == ("helix", {"hopb": 4})
    # The FFN reuses all kvp×tpa GPUs as TP (or another valid choice over that group).
    mlp = r.best.solution.assignment["layers.0.mlp"]
    assert mlp in ("tp", "dp", "replicate")


def test_helix_tpa_cannot_exceed_kv_heads(load):
    graph = load(str(EXAMPLES / "llama.py")).graph  # 2 KV heads
    hw = load_hardware("h100-sxm")
    wl = Workload(kind="decode", batch=8, seq=1, context=8192)
    with pytest.raises(InfeasiblePlanError, match="kv_heads=2 is not divisible by tpa=4"):
        search(graph, wl, hw, 8, force=[ForceRule.parse("layers.*.attention=helix(kvp=2,tpa=4)")])


def test_mla_helix_uses_tpa_one(load):
    graph = load(str(EXAMPLES / "deepseek.py")).graph
    hw = load_hardware("h100-sxm")
    wl = Workload(kind="decode", batch=4, seq=1, context=4096)
    r = search(graph, wl, hw, 4, force=[ForceRule.parse("layers.*.attention=helix")])
    assert r.best.mesh.size("kvp") >= 2 and r.best.mesh.size("tp") == 1
    with pytest.raises(InfeasiblePlanError, match="helix needs tpa=1"):
        search(graph, wl, hw, 4, force=[ForceRule.parse("layers.*.attention=helix(kvp=2,tpa=2)")])


def _decode_ctx(mesh: dict[str, int], context: int = 8191):
    from cost_models import CostModel
    from ir.mesh import Mesh
    from passes.parallelize.context import PlanContext

    return PlanContext(
        workload=Workload(kind="decode", batch=4, seq=1, context=context),
        cost=CostModel(hardware=load_hardware("h100-sxm")), mesh=Mesh.of(**mesh),
    )


def test_helix_tpa1_prices_the_programs_cp_decode_by_hand(load):
    """Llama-3-8B attention (Q 32, K 8, d 128, H 4096), B 4, one new token after 8191 cached
    (L + T = 8192), kvp 4, tpa 1 — context-parallel decode — in bf16, by hand:
    * KV: 8192 slots in blocks of 16 round-robin over 4 ranks -> 2048 per rank; the fullest
      rank reads 4·2048·8·(128+128)·2 B = 32 MiB, which is also its cache;
    * all-to-all: every partial output and its log-sum-exp in float32, as the program sends
      them: 4·1·32·(128+1)·4 = 66048 B per rank (33024 per HOP-B slice of 2 sequences);
    * combine: 4 partials of 32/4 heads in, bf16 out: 4·8·(4·129·4 + 128·2) = 74240 B;
    * all-reduce after the output projection: 4·4096·2 = 32768 B over kvp;
    * no query or append traffic: every rank computes Q and the new K/V itself."""
    from passes.parallelize.strategies.helix import explain_helix, helix_terms, price_helix

    block = next(b for b in load(str(EXAMPLES / "llama.py"), preset="llama3-8b").graph.blocks if b.kind == "attention")
    ctx = _decode_ctx({"kvp": 4})
    terms = helix_terms(block, ctx)
    assert terms["kv_tokens"] == 2048
    assert terms["slice_partials_bytes"] == 66048
    assert terms["combine_bytes"] == 74240
    assert terms["all_reduce_bytes"] == 32768
    assert terms["slice_attention_s"] == ctx.cost.attention_decode(
        batch=4, q_heads=32, kv_heads=8, kv_len=2048, head_dim=128, v_head_dim=None, q_len=1,
        dtype="bf16", kv_dtype="bf16",
    )
    assert helix_terms(block, ctx, hopb=2)["slice_partials_bytes"] == 33024
    priced = price_helix(block, ctx)
    assert priced.memory["kv_cache"] == 32 * 2**20
    assert priced.comm_s == {
        "all_to_all:kvp": ctx.collective_s("all_to_all", 66048, ("kvp",)),
        "all_reduce:kvp": ctx.collective_s("all_reduce", 32768, ("kvp",)),
    }
    notes = explain_helix(block, ctx, {})
    assert "holds 2048 of 8192 slots" in notes[0] and "64.5 KiB per rank" in notes[1]
    assert notes[2].startswith("tpa=1: this is context-parallel decode")
    assert not any("context-parallel" in n for n in explain_helix(block, _decode_ctx({"kvp": 2, "tp": 2}), {}))
    # the notes follow the plan's own HOP-B slicing and append block
    sliced = explain_helix(block, ctx, {"hopb": 2, "append_block": 1})
    assert "(blocks of 1 round-robin)" in sliced[0] and "per batch slice (hopb=2)" in sliced[0]
    assert f"{33024 / 1024:.1f} KiB per rank" in sliced[1]
    # twice the ranks: half the KV per rank, the same partials (independent of L)
    wider = helix_terms(block, _decode_ctx({"kvp": 8}))
    assert wider["kv_tokens"] == 1024 and wider["slice_partials_bytes"] == 66048


def test_cp_is_not_offered_for_decode_and_says_helix_is_its_decode_form(load):
    """A decode step's one new token leaves nothing for ring attention to split; the planner
    offers no cp strategy in decode, and forcing one names the decode form (helix, tpa=1),
    which then plans with the cache split over the same number of ranks."""
    from passes.parallelize.strategies import BY_NAME

    graph = load(str(EXAMPLES / "llama.py")).graph
    block = next(b for b in graph.blocks if b.kind == "attention")
    hw = load_hardware("h100-sxm")
    wl = Workload(kind="decode", batch=4, seq=1, context=4096)
    for name in ("cp_pass_kv", "cp_pass_q"):
        assert BY_NAME[name].why_not(block, _decode_ctx({"cp": 2})) == f"{name} applies to prefill, train workloads"
        assert "helix(kvp=N,tpa=1)" in BY_NAME[name].workload_reason("decode", hint=True)
    assert all(o.mesh.size("cp") == 1 for o in search(graph, wl, hw, 4).outcomes)
    with pytest.raises(InfeasiblePlanError, match=r"cp_pass_q\(cp=2\)'?: cp_pass_q applies to prefill.*helix"):
        search(graph, wl, hw, 2, force=[ForceRule.parse("layers.*.attention=cp_pass_q(cp=2)")])
    r = search(graph, wl, hw, 2, force=[ForceRule.parse("layers.*.attention=helix(kvp=2,tpa=1)")])
    assert r.best.mesh.size("kvp") == 2 and r.best.mesh.size("tp") == 1
    assert _attention_choice(r)[0] == "helix"
