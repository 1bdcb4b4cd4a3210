"""`import planner` as a library: plan an in-memory module."""

from __future__ import annotations

import torch

import planner
from planner.model_source import load_module_file
from tests.conftest import EXAMPLES


def test_plan_in_memory_module_matches_the_cli_pipeline(load, tmp_path):
    mod = load_module_file(str(EXAMPLES / "llama.py"))
    with torch.device("meta"):
        model = mod.build_model()
    inputs = mod.example_inputs("decode", 3, 5, 7, model=model, device="meta")
    p = planner.plan(model, inputs, hardware="h100-sxm", gpus=4, workload="decode", batch=8,
                     context=4096)
    assert isinstance(p, planner.Plan) and p.world_size == 4
    from_file = planner.Plan  # same type as the CLI's plans
    assert {b.name for b in p.blocks} >= {"embedding", "layers.0.attention", "lm_head"}
    # Same graph, same workload: the same strategies as planning the model file.
    from ir.workload import Workload
    from planner.api import make_plan

    run = make_plan(load(str(EXAMPLES / "llama.py")), hardware="h100-sxm", gpus=4,
                    workload=Workload(kind="decode", batch=8, seq=1, context=4096))
    assert [b.strategy for b in p.blocks] == [b.strategy for b in run.plan.blocks]
    assert p.mesh == run.plan.mesh
    path = p.save(tmp_path / "plan.json")
    assert from_file.load(path).to_json() == p.to_json()  # round trip (floats at 12 digits)
    assert "Runner-ups" in planner.explain(p)
