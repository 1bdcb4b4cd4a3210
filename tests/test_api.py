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
    from ir.capture import placeholder_target

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


def test_parallelize_dp_by_tp_plan_on_four_threaded_ranks():
    """Batch split over dp, heads/FFN over tp, head over vocab: the sharded module's logits
    and new K/V (gathered back) equal the module's, on every rank."""
    from planner.verify_runner import run_ranks_threaded

    llama = load_module_file(str(EXAMPLES / "llama.py"))
    torch.manual_seed(0)
    model = llama.build_model().eval()
    inputs = llama.example_inputs("prefill", 4, 8, 0, model=model)
    with torch.no_grad():
        want = model(**inputs)
    force = ["layers.*.attention=tp(tp=2)", "layers.*.mlp=tp(tp=2)", "lm_head=vocab(tp=2)"]
    p = planner.plan(model, inputs, gpus=4, workload="prefill", batch=4, seq=8, force=force)
    assert p.mesh.get("dp") == 2 and p.mesh.get("tp") == 2

    def rank_run(rank: int):
        sharded = planner.parallelize(model, p)
        return sharded(**inputs), sharded.local_param_bytes

    full_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    for got, local_bytes in run_ranks_threaded(4, rank_run):
        flat_got, flat_want = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)
        assert len(flat_got) == len(flat_want) == 5  # logits, then K and V of 2 layers
        for a, b in zip(flat_got, flat_want, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * max(1.0, b.abs().max().item()))
        assert local_bytes < 0.6 * full_bytes


def test_program_from_a_loaded_plan_is_the_program_of_the_fresh_plan(load, tmp_path):
    """JSON turns the workload's tuples into lists; a plan read back must still render the
    same run_plan.py text (its header prints the workload)."""
    from ir.plan import Plan
    from ir.workload import Workload
    from planner.api import make_plan
    from planner.verify_runner import write_run_plan

    graph = load(str(EXAMPLES / "llama.py"))
    run = make_plan(graph, hardware="h100-sxm", gpus=2,
                    workload=Workload(kind="train", batch=4, seq=8, zero_levels=(0, 2)))
    fresh = write_run_plan(run.graph, run.plan, tmp_path / "fresh").read_text()
    loaded_plan = Plan.load(run.plan.save(tmp_path / "plan.json"))
    assert loaded_plan.workload == run.plan.workload
    assert write_run_plan(run.graph, loaded_plan, tmp_path / "loaded").read_text() == fresh
