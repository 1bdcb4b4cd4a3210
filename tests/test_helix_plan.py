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
