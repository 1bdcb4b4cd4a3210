"""Helix in the generated program: exact against the single-process model, and its overlap.

Every case runs the generated `run_plan.py` for all ranks as threads of this process
(`planner.verify_runner.run_threaded`) on the tiny Llama (4 query heads, 2 KV heads):
prefill of an 8-token prompt in the plan's layouts, then 40 teacher-forced decode steps with
`--uneven-cache` (sequences continue from cache lengths 8, 5, 2, 7, so each sequence's new
tokens land on a different kvp rank and the ranks hold uneven KV) and append_block = 4, so
the round-robin appends wrap around every kvp rank several times. Every step's logits must
match (fp32, max abs err <= 1e-4 x max(1, |ref|)); each rank's weight and KV bytes must match
the plan's memory breakdown.

    mesh (dp x kvp x tp)   hopb   attention / mlp / embedding, lm_head
    kvp2                   2      helix / tp over kvp / vocab over kvp
    kvp2 x tp2             1, 2   helix / tp over kvp×tp / vocab over kvp×tp
    kvp4                   2      helix / tp over kvp / vocab over kvp
    dp2 x kvp2 x tp2       2      helix / tp over kvp×tp / vocab over kvp×tp
"""

from __future__ import annotations

import pytest

from ir.graph import Graph
from ir.plan import BlockPlan, Plan
from ir.rank_program import Collective, Compute, Wait
from ir.tensor import B, L
from passes.lower import lower
from planner.verify_runner import judge, program_args, run_threaded, write_run_plan
from tests.conftest import ROOT
from tests.test_codegen import with_program_memory

HELIX = {"attention": "helix", "mlp": "tp", "embedding": "vocab", "lm_head": "vocab"}
WORKLOAD = {"kind": "decode", "batch": 4, "seq": 1, "context": 8}
STEPS = 40
APPEND_BLOCK = 4


def helix_plan(graph: Graph, mesh: dict[str, int], *, hopb: int, append_block: int = APPEND_BLOCK) -> Plan:
    """A hand-made Helix plan with the memory breakdown of its lowered program (bf16)."""
    full_mesh = {"dp": 1, "cp": 1, "kvp": 1, "tp": 1, "ep": 1, **mesh}
    blocks = []
    for b in graph.blocks:
        s = HELIX.get(b.kind, "replicate")
        extras = {"hopb": hopb, "append_block": append_block} if s == "helix" else {}
        degrees = {a: full_mesh[a] for a in ("kvp", "tp") if full_mesh[a] > 1} if s != "replicate" else {}
        blocks.append(
            BlockPlan(
                name=b.name, kind=b.kind, group=b.group, strategy=s, degrees=degrees,
                layout_in="replicate", layout_out="replicate", dims=dict(b.dims), extras=extras,
            )
        )
    workload = {"weight_dtype": "bf16", "kv_dtype": "bf16", **WORKLOAD}
    plan = Plan(
        model=dict(graph.meta["source"]), hardware={}, workload=workload, mesh=full_mesh,
        rank_map=[], blocks=blocks, predicted={}, memory={}, solver={},
    )
    return with_program_memory(graph, plan)


@pytest.fixture(scope="module")
def llama():
    from tests.conftest import loaded

    return loaded(str(ROOT / "examples" / "llama.py")).graph


MATRIX = [
    ({"kvp": 2}, 2),
    ({"kvp": 2, "tp": 2}, 1),
    ({"kvp": 2, "tp": 2}, 2),
    ({"kvp": 4}, 2),
    ({"dp": 2, "kvp": 2, "tp": 2}, 2),
]


@pytest.mark.parametrize(
    ("mesh", "hopb"), MATRIX, ids=[f"{'x'.join(f'{k}{v}' for k, v in m.items())}-hopb{h}" for m, h in MATRIX]
)
def test_helix_decode_is_exact(llama, mesh, hopb, tmp_path):
    plan = helix_plan(llama, mesh, hopb=hopb)
    path = write_run_plan(llama, plan, tmp_path)
    argv = program_args(workload="decode", batch=4, seq=1, context=8, steps=STEPS) + ["--uneven-cache"]
    results = run_threaded(path, plan.world_size, argv)
    report = judge(plan, results, plan.world_size)
    assert report.ok, (report.max_abs_err, report.ref_scale)
    assert report.max_abs_err <= 1e-4 * report.ref_scale
    assert report.memory_ok, report.problems
    assert results[0]["steps_checked"] == 1 + STEPS
    # the KV is split over kvp: each rank holds 1/kvp of the (rounded-up) capacity
    tp = mesh.get("tp", 1)
    per_rank = 2 * 2 * 4 * (2 // tp) * 32 * 4 * results[0]["kv_tokens"] // mesh["kvp"]  # k+v, layers, B, heads, d, fp32
    assert results[0]["kv_bytes"] * mesh.get("dp", 1) == per_rank


def test_helix_rejects_prefill_workload(llama, tmp_path):
    plan = helix_plan(llama, {"kvp": 2}, hopb=1)
    path = write_run_plan(llama, plan, tmp_path)
    with pytest.raises(SystemExit, match="Helix"):
        run_threaded(path, 2, program_args(workload="prefill", batch=2, seq=2, context=2, steps=1))


def _block(program, name):
    return next(b for b in program.blocks if b.name == name)


def test_hopb_schedule_overlaps_all_to_all_with_next_slice(llama, tmp_path):
    """Slice i's all-to-all is issued before slice i+1's partial attention and waited after it."""
    hopb = 4
    plan = helix_plan(llama, {"kvp": 2, "tp": 2}, hopb=hopb)
    program = lower(llama, plan)
    steps = _block(program, "layers.0.attention").steps
    attn = [i for i, s in enumerate(steps) if isinstance(s, Compute) and s.target == "helix_partial_attention"]
    a2a = [i for i, s in enumerate(steps) if isinstance(s, Collective) and s.kind == "all_to_all"]
    handles = [steps[i].handle for i in a2a]
    waits = [next(i for i, s in enumerate(steps) if isinstance(s, Wait) and s.handle == h) for h in handles]
    assert len(attn) == len(a2a) == hopb
    assert all(steps[i].axis == "kvp" for i in a2a)
    for s in range(hopb - 1):
        assert attn[s] < a2a[s] < attn[s + 1] < waits[s], (s, attn, a2a, waits)
    # one all-reduce over the joined kvp×tp group after the output projection
    reduces = [s for s in steps if isinstance(s, Collective) and s.kind == "all_reduce"]
    assert [(s.axis) for s in reduces] == ["kvp_tp"]
    # the emitted text has the same order, with explicit async handles
    text = write_run_plan(llama, plan, tmp_path).read_text()
    body = text[text.index("def attention_0_helix("):]
    body = body[: body.index("\ndef ")]
    lines = body.splitlines()
    pos = {
        "attn": [i for i, ln in enumerate(lines) if "= helix_partial_attention(" in ln],
        "a2a": [i for i, ln in enumerate(lines) if "comm.all_to_all_single(" in ln and "async_op=True" in ln],
        "wait": [i for i, ln in enumerate(lines) if ln.strip().startswith("work_partial") and ".wait()" in ln],
    }
    assert all(len(v) == hopb for v in pos.values()), pos
    for s in range(hopb - 1):
        assert pos["attn"][s] < pos["a2a"][s] < pos["attn"][s + 1] < pos["wait"][s]


def test_helix_weight_and_cache_layouts(llama):
    program = lower(llama, helix_plan(llama, {"kvp": 2, "tp": 2}, hopb=1))
    weights = {w.fqn: w.layout.describe() for w in program.weights}
    # Q/K/V: this rank's TPA head slice, the same on every kvp rank
    assert weights["model.layers.0.self_attn.q_proj.weight"] == "tp=Shard(0) kvp=Replicate"
    # output projection: row-parallel over all N ranks, head blocks tp-major
    assert weights["model.layers.0.self_attn.o_proj.weight"] == "tp=Shard(1) kvp=Shard(1)"
    # the FFN as tp over the joined kvp×tp group
    assert weights["model.layers.0.mlp.down_proj.weight"] == "kvp=Shard(1) tp=Shard(1)"
    cache = next(p for p in program.inputs if p.name == "past_kv_0_0")
    v = program.values[cache.local]
    assert v.local_shape == (B, 1, L / 2, 32)
    assert {c.kvp_block for c in program.caches} == {APPEND_BLOCK}


# Context-parallel decode is helix with tpa=1 (passes/parallelize/strategies/cp.py says why no
# cp strategy is offered for decode): planned by the planner, the cache split over N ranks
# with append_block 1 (each new token to the next rank, round-robin), no padding of T.
CP_DECODE = [(2, 1), (4, 1), (4, 3)]


@pytest.mark.parametrize(("ranks", "append"), CP_DECODE, ids=[f"cp{n}-append{a}" for n, a in CP_DECODE])
def test_context_parallel_decode_is_helix_tpa1_and_exact(ranks, append, tmp_path):
    from ir.workload import Workload
    from planner.api import make_plan
    from tests.conftest import loaded

    force = [f"layers.*.attention=helix(kvp={ranks},tpa=1,append_block={append})"]
    run = make_plan(
        loaded(str(ROOT / "examples" / "llama.py")), hardware="h100-sxm", gpus=ranks,
        workload=Workload(kind="decode", batch=4, seq=1, context=9), force=force,
    )
    assert run.plan.mesh["kvp"] == ranks and run.plan.mesh["tp"] == run.plan.mesh["cp"] == 1
    steps = 7
    path = write_run_plan(run.graph, run.plan, tmp_path)
    argv = program_args(workload="decode", batch=4, seq=1, context=9, steps=steps) + ["--uneven-cache"]
    results = run_threaded(path, ranks, argv)
    report = judge(run.plan, results, ranks)
    assert report.ok, (report.max_abs_err, report.ref_scale, report.problems)
    assert report.max_abs_err <= 1e-4 * report.ref_scale
    assert report.memory_ok, report.problems
    assert results[0]["steps_checked"] == 1 + steps
    # no padding: capacity is prompt + steps rounded up to whole rounds of append blocks only
    unit = ranks * append
    assert results[0]["kv_tokens"] == -(-(9 + steps) // unit) * unit
    assert results[0]["kv_bytes"] == 2 * 2 * 4 * 2 * 32 * 4 * results[0]["kv_tokens"] // ranks


@pytest.mark.slow
def test_context_parallel_decode_verifies_under_torchrun(tmp_path, capsys):
    """`helixplan verify` of the decode form of cp (helix, tpa=1, append_block 1) on 4
    ranks under torchrun/gloo: prompt 13 (not a multiple of 4), 6 teacher-forced steps."""
    import json

    from planner.cli import main

    code = main([
        "verify", str(ROOT / "examples" / "llama.py"), "--nproc", "4", "--workload", "decode",
        "--batch", "4", "--context", "13", "--steps", "6", "--out", str(tmp_path / "plan"),
        "--force", "layers.*.attention=helix(kvp=4,tpa=1,append_block=1)",
    ])
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert code == 0 and summary["ok"], out.out + out.err
    assert summary["max_abs_err"] <= 1e-4 * summary["ref_scale"]
