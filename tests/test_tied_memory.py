"""A tied embedding / LM head table in plan memory: each reader holds it in its own layout
(two layouts, two copies), one copy when both readers hold the same layout; the integer
program's per-block memory sees the LM head's copy."""

from __future__ import annotations

import pytest

from cost_models import CostModel, load_hardware
from ir.mesh import Mesh
from ir.workload import Workload
from passes.parallelize.context import PlanContext
from passes.parallelize.pricing import price
from passes.parallelize.strategies import BY_NAME
from planner.api import make_plan
from tests.conftest import EXAMPLES, loaded

GPT2 = str(EXAMPLES / "gpt2.py")  # GPT-2 shape, vocabulary padded to split in two
DECODE = Workload(kind="decode", batch=4, seq=1, context=64)
TP2 = ["layers.*.attention=tp(tp=2)", "layers.*.mlp=tp(tp=2)", "layers.*.norm*=replicate",
       "final_norm=replicate"]


def _graph():
    return loaded(GPT2, preset="gpt2", vocab="50304").graph


def test_the_lm_head_reads_the_embedding_table_it_does_not_own():
    graph = _graph()
    by_kind = {b.kind: b for b in graph.blocks if b.kind in ("embedding", "lm_head")}
    table = 50304 * 768
    assert by_kind["lm_head"].param_count == 0
    assert by_kind["lm_head"].shared_param_count == table
    assert by_kind["embedding"].shared_param_count == 0
    assert by_kind["embedding"].param_count == table + 1024 * 768  # + learned positions


@pytest.mark.parametrize("strategy,split", [("replicate", 1), ("vocab", 2)])
def test_the_lm_head_option_prices_its_copy_of_the_table(strategy, split):
    """What the integer program's memory row reads for the LM head: the table in the head's
    layout (0 before the shared count existed)."""
    head = next(b for b in _graph().blocks if b.kind == "lm_head")
    ctx = PlanContext(workload=DECODE, cost=CostModel(hardware=load_hardware("h100-sxm")),
                      mesh=Mesh.of(tp=2))
    priced = price(head, BY_NAME[strategy], ctx)
    assert priced.memory["weights"] == pytest.approx(50304 * 768 / split * 2)  # bf16


def test_plan_memory_holds_one_copy_per_layout():
    graph = loaded(GPT2, preset="gpt2", vocab="50304")
    table_bytes = 50304 * 768 * 2

    def weights(embedding: str) -> float:
        run = make_plan(graph, hardware="h100-sxm", gpus=2, workload=DECODE,
                        force=[*TP2, f"embedding={embedding}", "lm_head=vocab(tp=2)"])
        assert {b.name: b.strategy for b in run.plan.blocks if b.kind in ("embedding", "lm_head")} == {
            "embedding": embedding.split("(")[0], "lm_head": "vocab"}
        breakdown = run.plan.memory["breakdown"]
        assert run.plan.memory["per_gpu_bytes"] == pytest.approx(sum(breakdown.values()))
        return breakdown["weights"]

    same = weights("vocab(tp=2)")  # both split by vocabulary rows: one half table per GPU
    apart = weights("replicate")  # the whole table for the lookup + a half for the head
    positions = 1024 * 768 * 2
    assert apart - same == pytest.approx(table_bytes + positions / 2)
