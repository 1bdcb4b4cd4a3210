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


def test_dynamo_placeholders_name_parameters_and_inputs():
    from planner.compile_backend import placeholder_target

    assert placeholder_target(
        "l_self_modules_model_modules_layers_modules_0_modules_self_attn_modules_q_proj_parameters_weight_"
    ) == ("param", "model.layers.0.self_attn.q_proj.weight")
    assert placeholder_target("l_self_modules_rotary_emb_buffers_inv_freq_") == ("buffer", "rotary_emb.inv_freq")
    assert placeholder_target("l_self_parameters_scale_") == ("param", "scale")
    assert placeholder_target("l_input_ids_") == ("input", "input_ids")


def test_parallelize_and_backend_need_a_process_group(load):
    import pytest

    from ir.errors import InputError
    from ir.workload import Workload
    from planner.api import make_plan

    run = make_plan(load(str(EXAMPLES / "llama.py")), hardware="h100-sxm", gpus=2,
                    workload=Workload(kind="prefill", batch=2, seq=8, context=0))
    model = load_module_file(str(EXAMPLES / "llama.py")).build_model()
    with pytest.raises(InputError, match="init_process_group"):
        planner.parallelize(model, run.plan)
    with pytest.raises(InputError, match="init_process_group"):
        planner.backend()(torch.fx.symbolic_trace(torch.nn.Linear(2, 2)), [torch.zeros(1, 2)])
