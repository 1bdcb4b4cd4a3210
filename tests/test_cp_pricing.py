"""Ring attention's priced transfers, by hand (Llama-3-8B attention: 32 query heads, 8 KV
heads, head dim 128, bf16 activations)."""

from __future__ import annotations

import pytest

from cost_models import CostModel, load_hardware
from ir.mesh import Mesh
from ir.workload import Workload
from passes.parallelize.context import PlanContext
from passes.parallelize.strategies.cp import ring_terms
from tests.conftest import EXAMPLES, loaded

H100 = load_hardware("h100-sxm")


def _attention():
    graph = loaded(str(EXAMPLES / "llama.py"), preset="llama3-8b").graph
    return next(b for b in graph.blocks if b.kind == "attention")


def test_pass_q_closing_all_to_all_sends_float32_partials_with_their_lse():
    """8192 new tokens after 32768 cached, cp=16 on two 8-GPU nodes: each rank holds
    8192 / 16 = 512 new tokens and ends the ring by sending, to every rank, its partial outputs
    and log-sum-exps for their queries: 512 tokens · 32 heads · (128 + 1) · 4 bytes per peer,
    ×16 in the send buffer — float32, as attend_block returns them (the bf16 pricing of the
    outputs was half of it)."""
    block = _attention()
    ctx = PlanContext(workload=Workload(kind="prefill", batch=1, seq=8192, context=32768),
                      cost=CostModel(hardware=H100), mesh=Mesh.of(cp=16))
    terms = ring_terms(block, ctx, "cp_pass_q")
    send_buffer = 512 * 32 * (128 + 1) * 4 * 16
    assert send_buffer == 135_266_304
    assert terms["final_all_to_all_s"] == pytest.approx(
        ctx.collective_s("all_to_all", send_buffer, ("cp",)), rel=1e-12
    )
    # pass-Q's ring moves the queries: 512 tokens · 32 heads · 128 · 2 bytes per step
    assert terms["message_bytes"] == 512 * 32 * 128 * 2
