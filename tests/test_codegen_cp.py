"""Context parallelism (ring attention) in the generated program, and the planner's choice.

Numeric cases: plans made by the planner with the attention strategy forced, the generated
`run_plan.py` launched under torchrun on gloo (the threaded process group has no send/recv,
which the ring needs) and compared with the single-process tiny Llama (4 query heads, 2 KV
heads; fp32, max abs err <= 1e-4 x max(1, |ref|)), each rank's weight and KV bytes against the
plan. Lengths are chosen so that the balanced layout pads (T not a multiple of 2·cp; T < 2·cp
leaves a rank with padding only) and so that a cached prefix does not divide over cp.

    ranks  mesh        attention    run                        other blocks
    2      cp2         cp_pass_kv   prompt 13, 5 decode steps  replicate
    4      cp4         cp_pass_q    prefill T 3, L 45          replicate
    4      cp4         cp_pass_kv   prefill T 16, L 16         replicate
    4      cp2 x tp2   cp_pass_q    prefill T 11, L 9          mlp tp, embedding / lm_head vocab
    4      cp2 x tp2   cp_pass_kv   prompt 10, 4 decode steps  mlp tp, embedding / lm_head vocab

Decode after a CP prefill: the prompt is prefilled over cp in the balanced layout (its K/V stays
where it was computed), then each teacher-forced step attends over that KV plus the steps'
KV, appended round-robin over the cp ranks; every step's logits are compared.

Planner cases (one process): the Llama-3.1-405B shape on 16 nodes × 8 H100 (CP16 × TP8),
128K tokens of context: pass-Q at a 1% cache miss, pass-KV at 100% (full prefill).
"""

from __future__ import annotations

import re

import pytest

from ir.mesh import Mesh
from ir.rank_program import Compute
from ir.tensor import T
from ir.workload import Workload
from passes.lower import lower
from passes.parallelize.search import mesh_candidates
from planner.api import make_plan
from planner.report import explain_text
from planner.verify_runner import judge, program_args, run_torchrun, verify_program, write_run_plan
from tests.conftest import ROOT

LLAMA = str(ROOT / "examples" / "llama.py")


def cp_plan(load, gpus: int, force: list[str], *, seq: int = 16, context: int = 0):
    run = make_plan(
        load(LLAMA), hardware="h100-sxm", gpus=gpus,
        workload=Workload(kind="prefill", batch=2, seq=seq, context=context), force=force,
    )
    return run


TP_REST = ["layers.*.mlp=tp", "embedding=vocab", "lm_head=vocab"]
CASES = [
    (4, ["layers.*.attention=cp_pass_q(cp=4)"], 3, 45),
    (4, ["layers.*.attention=cp_pass_kv(cp=4)"], 16, 16),
    (4, ["layers.*.attention=cp_pass_q(cp=2,tp=2)", *TP_REST], 11, 9),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("gpus", "force", "seq", "context"), CASES,
    ids=["q-cp4-T3-L45", "kv-cp4-T16-L16", "q-cp2xtp2-T11-L9"],
)
def test_ring_attention_prefill_is_exact_under_torchrun(load, tmp_path, gpus, force, seq, context):
    run = cp_plan(load, gpus, force, seq=seq, context=context)
    attention = {b.strategy for b in run.plan.blocks if b.kind == "attention"}
    assert attention == {force[0].split("=")[1].split("(")[0]}
    path = write_run_plan(run.graph, run.plan, tmp_path)
    report = verify_program(
        path, run.plan, nproc=gpus, workload="prefill", batch=2, seq=seq, context=context, steps=1,
    )
    assert report.ok, (report.max_abs_err, report.ref_scale, report.problems)
    assert report.max_abs_err <= 1e-4 * report.ref_scale
    assert report.memory_ok, report.problems


DECODE_CASES = [
    (2, ["layers.*.attention=cp_pass_kv(cp=2)"], 13, 5),
    (4, ["layers.*.attention=cp_pass_kv(cp=2,tp=2)", *TP_REST], 10, 4),
]


@pytest.mark.slow
@pytest.mark.parametrize(("gpus", "force", "prompt", "steps"), DECODE_CASES, ids=["kv-cp2", "kv-cp2xtp2"])
def test_decode_after_cp_prefill_is_exact_under_torchrun(load, tmp_path, gpus, force, prompt, steps):
    run = cp_plan(load, gpus, force, seq=prompt)
    path = write_run_plan(run.graph, run.plan, tmp_path)
    results = run_torchrun(
        path, gpus, program_args(workload="decode", batch=2, seq=1, context=prompt, steps=steps)
    )
    report = judge(run.plan, results, gpus)
    assert report.ok, (report.max_abs_err, report.ref_scale, report.problems)
    assert results[0]["steps_checked"] == 1 + steps
    # KV stays where it was computed: each rank holds its balanced prompt share plus its
    # round-robin share of the decode steps (k and v, 2 layers, B 2, KV heads / tp, d 32, fp32)
    tp = run.plan.mesh["tp"]
    local = -(-prompt // (2 * run.plan.mesh["cp"])) * 2 + -(-steps // run.plan.mesh["cp"])
    assert {r["kv_tokens"] for r in results} == {local}
    assert {r["kv_bytes"] for r in results} == {2 * 2 * 2 * (2 // tp) * 32 * 4 * local}


def test_cp_lowering_splits_tokens_and_keeps_the_cache_where_it_lives(load, tmp_path):
    run = cp_plan(load, 4, ["layers.*.attention=cp_pass_kv(cp=2,tp=2)"])
    program = lower(run.graph, run.plan)
    inputs = {p.name: program.values[p.local] for p in program.inputs}
    assert inputs["input_ids"].layout.describe() == "cp=Shard(1) tp=Replicate"
    assert inputs["input_ids"].local_shape[1] == T / 2
    # the cached prefix: L split over cp (contiguous slices), KV heads over tp
    assert inputs["past_kv_0_0"].layout.describe() == "cp=Shard(2) tp=Shard(1)"
    kernels = [
        s for item in program.items for s in getattr(item, "steps", ())
        if isinstance(s, Compute) and s.target.startswith("ring_attention")
    ]
    assert [k.target for k in kernels] == ["ring_attention_pass_kv"] * 2
    # no SDPA is left: the ring kernel replaced it, and the logits leave split over cp
    targets = {s.target for item in program.items for s in getattr(item, "steps", ()) if isinstance(s, Compute)}
    assert "scaled_dot_product_attention" not in targets
    logits = next(o for o in program.outputs if o.role == "logits")
    assert program.values[logits.local].layout.on("cp").dim == 1
    text = write_run_plan(run.graph, run.plan, tmp_path).read_text()
    assert "ring_attention_pass_kv(" in text and "cp_balance" in text


def test_mesh_candidates_with_cp():
    meshes = {str(m) for m in mesh_candidates(8, cp=True)}
    assert {"cp=8", "cp=2×tp=4", "dp=2×cp=2×tp=2", "dp=8", "tp=8"} <= meshes
    assert len(meshes) == len(mesh_candidates(8, cp=True)) == 10
    assert all(m.size("cp") == 1 for m in mesh_candidates(8))


@pytest.fixture(scope="module")
def llama405b():
    from tests.conftest import loaded

    return loaded(LLAMA, preset="llama3.1-405b")


def _plan_405b(loaded_model, miss: float):
    context = 128 * 1024
    seq = max(1, round(context * miss))
    run = make_plan(
        loaded_model, hardware="h100-sxm", gpus=128,
        workload=Workload(kind="prefill", batch=1, seq=seq, context=context - seq, weight_dtype="fp8"),
        force=["layers.*.mlp=tp(cp=16,tp=8)"],
    )
    assert run.plan.mesh["cp"] == 16 and run.plan.mesh["tp"] == 8
    return run.plan


def _attention(plan) -> str:
    return {b.strategy for b in plan.blocks if b.kind == "attention"}.pop()


def test_ilp_picks_pass_q_with_a_big_cached_prefix(llama405b):
    plan = _plan_405b(llama405b, 0.01)
    assert _attention(plan) == "cp_pass_q"
    # explain: both variants' times and the crossover, which the cost model puts below the
    # 2K/Q = 12.5% rule of thumb (pass-KV's send hides behind each step's attention)
    notes = plan.predicted["notes"]["attention.0"]
    kv_us, q_us = (float(x) for x in re.findall(r"pass-(?:KV|Q) ([0-9.]+) µs", notes[0]))
    assert q_us < kv_us
    share = float(re.search(r"T/\(T\+L\) = ([0-9.]+)%;", notes[2]).group(1))
    assert 1.0 < share < 12.5
    assert "rule of thumb 2·K/Q = 12.50%" in notes[2]
    assert "crossover" in explain_text(plan)


def test_ilp_picks_pass_kv_for_full_prefill(llama405b):
    assert _attention(_plan_405b(llama405b, 1.0)) == "cp_pass_kv"


def test_balanced_tokens_per_rank_in_pricing():
    from cost_models import CostModel
    from cost_models.hardware import load_hardware
    from passes.parallelize.context import PlanContext

    ctx = PlanContext(
        workload=Workload(kind="prefill", batch=1, seq=13, context=0),
        cost=CostModel(hardware=load_hardware("h100-sxm")), mesh=Mesh.of(cp=2),
    )
    assert ctx.replica_tokens() == 8  # 13 padded to 16 (2·cp chunks), 8 per rank


def test_runtime_balanced_layout_and_lse_merge(load, tmp_path):
    """The generated program's CP helpers: rank i holds chunks i and 2·cp−1−i, balancing pads
    and un-balancing restores; merging partials over disjoint keys equals full attention."""
    import importlib.util

    import torch

    run = cp_plan(load, 2, ["layers.*.attention=cp_pass_q(cp=2)"])
    path = write_run_plan(run.graph, run.plan, tmp_path)
    spec = importlib.util.spec_from_file_location("cp_runtime_under_test", path)
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)
    assert rt.MESH["cp"] == 2
    assert rt.cp_positions(4, 0).tolist() == [0, 1, 6, 7]
    assert rt.cp_positions(4, 1).tolist() == [2, 3, 4, 5]
    x = torch.arange(2 * 5).view(2, 5) + 1  # 5 tokens: padded to 8 with zeros
    balanced = rt.cp_balance(x, 1)
    assert balanced[0].tolist() == [1, 2, 0, 0, 3, 4, 5, 0]
    assert torch.equal(rt.cp_unbalance(balanced, 1, 5), x)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 3, 8, generator=g) for _ in range(3))
    valid = torch.rand(1, 1, 3, 3, generator=g) > 0.3
    valid[..., 0] = True
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=valid)
    parts = [rt.attend_block(q, k[:, :, s], v[:, :, s], valid[..., s], 8**-0.5) for s in (slice(0, 1), slice(1, 3))]
    got, _ = rt.merge_partials(*parts[0], *parts[1])
    assert torch.allclose(got, want, atol=1e-6)
