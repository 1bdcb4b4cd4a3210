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


SHARED_LAYERS = '''
import sys
sys.path.insert(0, {examples!r})
import gpt2
from torch import nn


def build_model(**size):
    """GPT-2 with one block reused at every depth (ALBERT-style cross-layer sharing)."""
    model = gpt2.build_model(**size)
    model.model.layers = nn.ModuleList(model.model.layers[0] for _ in model.model.layers)
    return model


example_inputs = gpt2.example_inputs
'''


def test_layers_reusing_one_block_are_charged_one_copy_per_group(tmp_path):
    """Twelve layers reading layer 0's weights: layer 0 owns them, layers 1-11 form one group
    that shares one copy (priced 1/11 each), so a plan holds two copies at most — not twelve
    (the integer program prices a group as one block times its size)."""
    (tmp_path / "albert.py").write_text(SHARED_LAYERS.format(examples=str(EXAMPLES)))
    run_graph = loaded(str(tmp_path / "albert.py"), preset="gpt2", layers="12", vocab="50304")
    graph = run_graph.graph
    readers = [b for b in graph.blocks if b.kind == "attention" and b.layer and b.layer > 0]
    assert len(readers) == 11 and len({b.group for b in readers}) == 1
    owner = next(b for b in graph.blocks if b.name == "layers.0.attention")
    assert sum(b.shared_param_count for b in readers) == pytest.approx(owner.param_count)
    run = make_plan(run_graph, hardware="h100-sxm", gpus=1, workload=DECODE)
    params = sum(b.param_count for b in graph.blocks) * 2  # bf16, all on one GPU
    assert run.plan.memory["breakdown"]["weights"] == pytest.approx(params)
    # the integer program's row: one more copy of the layer (all 12 read it replicated, as
    # its owner) and of the tied table — the safe side, by one copy per group
    layer = sum(b.param_count for b in graph.blocks if b.layer == 0) * 2
    table = 50304 * 768 * 2
    solved = run.result.best.solution.memory_bytes
    assert solved - run.plan.memory["per_gpu_bytes"] == pytest.approx(layer + table)


def test_a_training_plan_holds_a_tied_table_in_one_layout():
    """The training program keeps one tensor per weight, so the table's readers must agree:
    forcing only the head to split by vocabulary makes the embedding follow it; forcing the
    two apart is an input error that says what to do."""
    from ir.errors import InputError
    from planner.api import split_shared_weights

    graph = loaded(GPT2, preset="gpt2", vocab="50304")
    train = Workload(kind="train", batch=4, seq=64)
    run = make_plan(graph, hardware="h100-sxm", gpus=2, workload=train,
                    force=[*TP2, "lm_head=vocab(tp=2)"])
    assert run.plan.block("embedding").strategy == "vocab"
    assert split_shared_weights(graph.graph, run.plan.blocks) == []
    with pytest.raises(InputError, match="force both to one strategy"):
        make_plan(graph, hardware="h100-sxm", gpus=2, workload=train,
                  force=[*TP2, "lm_head=vocab(tp=2)", "embedding=replicate"])
