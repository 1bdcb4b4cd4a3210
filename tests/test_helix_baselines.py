"""The priced non-Helix baselines (KV-duplicating TP, FFN tied to the attention TP group) and
Helix's append-block pricing."""

from __future__ import annotations

import itertools

import pytest

from cost_models import CostModel, load_hardware
from ir.errors import InfeasiblePlanError
from ir.mesh import Mesh
from ir.workload import Workload
from passes.parallelize.build import ForceRule
from passes.parallelize.context import PlanContext
from passes.parallelize.pricing import price
from passes.parallelize.search import search
from passes.parallelize.strategies import BY_NAME, DEFAULT_STRATEGIES
from passes.parallelize.strategies.helix import kv_tokens_per_rank
from tests.conftest import EXAMPLES


def _ctx(wl: Workload, hw: str = "h100-sxm", **mesh: int) -> PlanContext:
    return PlanContext(workload=wl, cost=CostModel(hardware=load_hardware(hw)), mesh=Mesh.of(**mesh))


def _block(graph, name: str):
    return next(b for b in graph.blocks if b.name == name)


@pytest.mark.parametrize("tokens,kvp,ab", list(itertools.product((1, 5, 16, 17, 33, 64, 100, 1000), (1, 2, 3, 4), (1, 4, 16))))
def test_kv_tokens_per_rank_is_the_fullest_rank(tokens, kvp, ab):
    """The same slot rule the generated program uses: slot g lives on rank (g // ab) % kvp."""
    held = [0] * kvp
    for g in range(tokens):
        held[(g // ab) % kvp] += 1
    assert kv_tokens_per_rank(tokens, kvp, ab) == max(held)


def test_append_block_prices_the_fullest_rank(load):
    """At 100 cached tokens on 4 kvp ranks, blocks of 64 put 64 tokens on one rank; blocks of 4
    put 28: the attention and KV-cache terms follow the fullest rank."""
    graph = load(str(EXAMPLES / "llama.py")).graph
    attn = _block(graph, "layers.0.attention")
    ctx = _ctx(Workload(kind="decode", batch=64, seq=1, context=99), kvp=4)
    small = price(attn, BY_NAME["helix"], ctx, append_block=4)
    large = price(attn, BY_NAME["helix"], ctx, append_block=64)
    assert large.memory["kv_cache"] / small.memory["kv_cache"] == pytest.approx(64 / 28)
    r = search(graph, ctx.workload, load_hardware("h100-sxm"), 4,
               force=[ForceRule.parse("layers.*.attention=helix(kvp=4,append_block=4)")])
    choice = r.best.built.meaning[r.best.solution.assignment["layers.0.attention"]]
    assert choice[0] == "helix" and choice[1]["append_block"] == 4


def test_tp_kvdup_duplicates_kv_heads(load):
    """Llama-3.1-405B has 8 KV heads: on 16 ranks plain TP is impossible; tp_kvdup halves the
    query work but each rank still holds a whole KV head — the same cache as at TP 8 — and
    the K/V projection weights of that head."""
    graph = load(str(EXAMPLES / "llama.py"), preset="llama3.1-405b").graph
    attn = _block(graph, "layers.0.attention")
    wl = Workload(kind="decode", batch=8, seq=1, context=1 << 17)
    tp8 = price(attn, BY_NAME["tp"], _ctx(wl, tp=8))
    dup16 = price(attn, BY_NAME["tp_kvdup"], _ctx(wl, tp=16))
    assert BY_NAME["tp"].why_not(attn, _ctx(wl, tp=16)) is not None
    assert BY_NAME["tp_kvdup"].why_not(attn, _ctx(wl, tp=8)) is not None  # N <= K: plain tp
    assert dup16.memory["kv_cache"] == pytest.approx(tp8.memory["kv_cache"])
    d = attn.dims
    kv_params = d["kv_heads"] * 2 * d["head_dim"] * d["hidden"]
    expected = (attn.param_count - kv_params) / 16 + kv_params / 8
    assert dup16.memory["weights"] == pytest.approx(expected * 2)  # bf16
    # the KV read dominates at 128K: 16 ranks barely beat 8
    assert dup16.time_s > 0.8 * tp8.time_s


def test_baselines_are_offered_only_on_request(load):
    assert {"tp_kvdup", "tp_attn_group"}.isdisjoint(DEFAULT_STRATEGIES)
    graph = load(str(EXAMPLES / "llama.py"), preset="llama3.1-405b").graph
    wl = Workload(kind="decode", batch=8, seq=1, context=1 << 15, weight_dtype="fp8", kv_dtype="fp8")
    hw = load_hardware("h100-sxm")
    default = search(graph, wl, hw, 16, strategies=DEFAULT_STRATEGIES - {"helix"}, top_k=1)
    assert "tp_kvdup" not in default.best.solution.assignment.values()
    with_dup = search(graph, wl, hw, 16, strategies=(DEFAULT_STRATEGIES - {"helix"}) | {"tp_kvdup"},
                      force=[ForceRule.parse("layers.*.attention=tp_kvdup")], top_k=1)
    assert with_dup.best.mesh.size("tp") == 16


def test_tp_attn_group_keeps_ffn_on_tpa_ranks(load):
    """KV parallelism tied to TP: the FFN splits over tp = TPA only, so each rank reads KVP
    times more FFN weight than Helix's FFN over all kvp×tpa ranks."""
    graph = load(str(EXAMPLES / "llama.py"), preset="llama3.1-405b").graph
    mlp = _block(graph, "layers.0.mlp")
    wl = Workload(kind="decode", batch=8, seq=1, context=1 << 17)
    ctx = _ctx(wl, kvp=4, tp=8)
    tied = price(mlp, BY_NAME["tp_attn_group"], ctx)
    full = price(mlp, BY_NAME["tp"], ctx)
    assert tied.memory["weights"] == pytest.approx(4 * full.memory["weights"])
    assert tied.time_s > full.time_s
    tiny = load(str(EXAMPLES / "llama.py")).graph
    with pytest.raises(InfeasiblePlanError, match="kvp=1 here"):
        search(tiny, Workload(kind="decode", batch=8, seq=1, context=64), load_hardware("h100-sxm"), 4,
               strategies=DEFAULT_STRATEGIES | {"tp_attn_group"},
               force=[ForceRule.parse("layers.*.mlp=tp_attn_group(kvp=1,tp=4)")])
    r = search(tiny, Workload(kind="decode", batch=8, seq=1, context=64), load_hardware("h100-sxm"), 4,
               strategies=DEFAULT_STRATEGIES | {"tp_attn_group"},
               force=[ForceRule.parse("layers.*.mlp=tp_attn_group(kvp=2,tp=2)")])
    assert r.best.solution.assignment["layers.0.mlp"] == "tp_attn_group"
