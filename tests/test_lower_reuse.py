"""Lowering a repeated layer once and copying it renamed (passes/lower/reuse.py) gives the
program, and the run_plan.py text, that lowering every block by its rules gives.

The model is a 10-layer Llama on a kvp2 x tp2 mesh with strategies mixed across layers:
attention Helix (HOP-B 1) in layers 0-3, tensor parallel in 4-6, Helix with HOP-B 2 in
7-9; the MLP tensor parallel in 0-4 and replicated in 5-9; embedding and LM head split by
vocabulary. Each run of same-strategy layers is its own reuse group; the first blocks of
a group are lowered by the rules (one of them checks the record), the rest are copies."""

from __future__ import annotations

from dataclasses import replace

import pytest

from codegen.build import build_context
from codegen.render import render_program
from ir.graph import Graph
from ir.plan import BlockPlan, Plan
from passes.lower import lower
from passes.lower.lower import LowerToRanks
from passes.lower.schedule import ScheduleOverlap
from tests.conftest import ROOT

MESH = {"dp": 1, "cp": 1, "kvp": 2, "tp": 2, "ep": 1}
SIZES = {"layers": "10", "hidden": "256", "heads": "8", "kv_heads": "4", "ffn": "512", "vocab": "512"}


def _strategy(block) -> tuple[str, dict]:
    layer = block.layer if block.layer is not None else -1
    if block.kind == "attention":
        if 4 <= layer <= 6:
            return "tp", {}
        return "helix", {"hopb": 1 if layer < 4 else 2, "append_block": 4}
    if block.kind == "mlp":
        return ("tp", {}) if layer <= 4 else ("replicate", {})
    if block.kind in ("embedding", "lm_head"):
        return "vocab", {}
    return "replicate", {}


def mixed_plan(graph: Graph, choose=_strategy, mesh: dict[str, int] = MESH) -> Plan:
    """A decode plan giving each block `choose(block)` -> (strategy, extras), split over the
    mesh's model axes unless replicated."""
    split = {a: n for a, n in mesh.items() if a in ("kvp", "tp") and n > 1}
    blocks = []
    for b in graph.blocks:
        strategy, extras = choose(b)
        degrees = split if strategy != "replicate" else {}
        blocks.append(BlockPlan(
            name=b.name, kind=b.kind, group=b.group, strategy=strategy, degrees=degrees,
            extras=extras, layout_in="replicate", layout_out="replicate", dims=dict(b.dims),
        ))
    workload = {"kind": "decode", "batch": 4, "seq": 1, "context": 8,
                "weight_dtype": "bf16", "kv_dtype": "bf16"}
    return Plan(model=dict(graph.meta["source"]), hardware={}, workload=workload, mesh=dict(mesh),
                rank_map=[], blocks=blocks, predicted={}, memory={}, solver={})


@pytest.fixture(scope="module")
def llama10():
    from tests.conftest import loaded

    return loaded(str(ROOT / "examples" / "llama.py"), **SIZES).graph


def _one_by_one(graph: Graph, plan: Plan):
    return ScheduleOverlap().run(LowerToRanks(plan=plan, reuse=False).run(graph))


def _same_program(a, b) -> None:
    assert a == b
    # the orders the generated text follows: local values, weights (the loading table)
    assert list(a.values) == list(b.values)
    assert [w.key for w in a.weights] == [w.key for w in b.weights]


def test_reused_lowering_is_the_one_by_one_lowering(llama10):
    plan = mixed_plan(llama10)
    reference = _one_by_one(llama10, plan)
    assert reference.renamed_from == {}
    program = lower(llama10, plan)
    _same_program(program, reference)

    # every run of 4+ same-strategy blocks had copies, each copied from its own run
    entry = {bp.name: (bp.strategy, repr(sorted(bp.extras.items()))) for bp in plan.blocks}
    copied = program.renamed_from
    for layers, kind in (((0, 1, 2, 3), "attention"), ((0, 1, 2, 3, 4), "mlp"), ((5, 6, 7, 8, 9), "mlp")):
        names = [f"layers.{i}.{kind}" for i in layers]
        assert any(n in copied for n in names), (kind, layers, sorted(copied))
    assert copied and all(entry[b] == entry[t] for b, t in copied.items())
    assert all(int(b.split(".")[1]) > int(t.split(".")[1]) for b, t in copied.items())

    # codegen renders a copied block once (checked on its first copy): the same text
    model_file = str(ROOT / "examples" / "llama.py")
    text = render_program(build_context(program, plan, model_file=model_file))
    plain = render_program(build_context(replace(program, renamed_from={}), plan, model_file=model_file))
    assert text == plain
    assert "def attention_0_helix(" in text and "def attention_0_tp(" in text


def test_a_record_that_does_not_check_out_is_never_copied(llama10, monkeypatch):
    """If renaming a record does not reproduce a block lowered by the rules, the group is
    lowered by the rules throughout."""
    from passes.lower import reuse

    plan = mixed_plan(llama10)
    original = reuse._rename_step

    def off_by_one(step, renamers, rn, names):
        out = original(step, renamers, rn, names)
        return replace(out, source_op=out.source_op + "x") if hasattr(out, "source_op") else out

    monkeypatch.setattr(reuse, "_rename_step", off_by_one)
    program = lower(llama10, plan)
    assert program.renamed_from == {}
    _same_program(program, _one_by_one(llama10, plan))


def test_moe_blocks_with_a_buffer_are_copied_too():
    """DeepSeek's MoE blocks read a buffer (the router's score bias, `WeightShard.buffer`):
    a copy must carry every field of the recorded weights, or the record never checks out
    and every MoE block is lowered by the rules (as happened when the flag was added)."""
    from tests.conftest import loaded

    graph = loaded(str(ROOT / "examples" / "deepseek.py"), layers="6").graph
    moe = [b for b in graph.blocks if b.kind == "moe"]
    assert len(moe) == 5
    plan = mixed_plan(graph, lambda b: ("ep", {}) if b.kind == "moe" else ("replicate", {}),
                      mesh={"dp": 1, "cp": 1, "kvp": 1, "tp": 2, "ep": 1})
    program = lower(graph, plan)
    _same_program(program, _one_by_one(graph, plan))
    assert any(w.buffer for w in program.weights)
    assert sum(b.name in program.renamed_from for b in moe) >= 2
