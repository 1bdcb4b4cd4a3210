"""The planner: known optima by brute force, memory caps, forcing, determinism, errors."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import pytest

from cost_models import CostModel, load_hardware
from ir.errors import InfeasiblePlanError, InputError
from ir.workload import Workload
from passes.parallelize.build import ForceRule, build_problem, hidden_edges
from passes.parallelize.context import PlanContext
from passes.parallelize.ilp import plan_time_s
from passes.parallelize.search import mesh_candidates, search, workspace_bytes
from passes.parallelize.strategies import DEFAULT_STRATEGIES
from tests.conftest import EXAMPLES, ROOT

H100 = load_hardware("h100-sxm")


def _brute_force_best(graph, workload, hw, gpus, reserve=0.0):
    """Every mesh × every strategy per group, priced by the same pricing, no ILP."""
    best = None
    edges = hidden_edges(graph)
    for mesh in mesh_candidates(gpus):
        if workload.batch % mesh.size("dp"):
            continue
        ctx = PlanContext(workload=workload, cost=CostModel(hardware=hw), mesh=mesh)
        fixed = workspace_bytes(graph, workload, mesh, ctx.act_bytes, reserve)
        built = build_problem(
            graph, ctx, capacity_bytes=hw.hbm_capacity_bytes, fixed_bytes=fixed, force=[],
            time_budget_s=None, share_groups=True, edges=edges, allowed=DEFAULT_STRATEGIES,
        )
        groups: dict[str, list[str]] = {}
        options: dict[str, list] = {}
        for b in built.problem.blocks:
            groups.setdefault(b.group, []).append(b.name)
            options[b.group] = b.options
        names = sorted(groups)
        for combo in itertools.product(*(options[g] for g in names)):
            assignment = {blk: opt.name for g, opt in zip(names, combo, strict=True) for blk in groups[g]}
            mem = fixed + sum(
                opt.memory_bytes * len(groups[g]) for g, opt in zip(names, combo, strict=True)
            )
            if mem > hw.hbm_capacity_bytes:
                continue
            t = plan_time_s(built.problem, assignment)
            if best is None or t < best[0] - 1e-15:
                best = (t, str(mesh), assignment)
    return best


@pytest.mark.parametrize(
    "example,workload,gpus",
    [
        ("llama", Workload(kind="decode", batch=8, seq=1, context=4096), 4),
        ("llama", Workload(kind="prefill", batch=2, seq=64, context=0), 2),
        # one sharding level and no recomputation keep the brute force small; the training
        # decisions have their own brute-force test in test_training_plan.py
        ("gpt2", Workload(kind="train", batch=8, seq=128, zero_levels=(0,), recompute="none"), 8),
        ("mixtral", Workload(kind="decode", batch=4, seq=1, context=1024), 4),
    ],
)
def test_ilp_matches_brute_force(load, example, workload, gpus):
    graph = load(str(EXAMPLES / f"{example}.py")).graph
    result = search(graph, workload, H100, gpus, reserve_bytes=0.0)
    brute = _brute_force_best(graph, workload, H100, gpus)
    assert result.best.solution.status == "OPTIMAL"
    assert result.best.solution.objective_s == pytest.approx(brute[0], rel=1e-6)


def test_memory_cap_forces_weight_sharding(load):
    """Llama-3-8B prefill on 2 GPUs: compute-bound, so with room the planner replicates the
    weights and splits the batch (no all-reduces). 16 GB of bf16 weights do not fit a 12 GiB
    GPU replicated, so under that cap it must split the big blocks over tp."""
    graph = load(str(EXAMPLES / "llama.py"), preset="llama3-8b").graph
    wl = Workload(kind="prefill", batch=4, seq=512, context=0)
    roomy = search(graph, wl, H100, 2, reserve_bytes=0.0)
    small = dataclasses.replace(H100, hbm_capacity_bytes=12 * 2**30)
    capped = search(graph, wl, small, 2, reserve_bytes=0.0)
    chosen = capped.best.solution.assignment
    assert capped.best.solution.memory_bytes <= 12 * 2**30
    assert str(capped.best.mesh) == "tp=2"
    assert chosen["layers.0.mlp"] == "tp"  # the 14 GB of MLP weights must split
    # With room the optimum is the replicated one, faster and over the cap: the cap binds.
    roomy_choice = roomy.best.solution.assignment
    assert {roomy_choice["layers.0.mlp"], roomy_choice["layers.0.attention"]} <= {"dp", "replicate"}
    assert roomy.best.solution.memory_bytes > 12 * 2**30
    assert roomy.best.solution.objective_s < capped.best.solution.objective_s


def test_forced_plan_never_beats_optimum(load):
    graph = load(str(EXAMPLES / "llama.py")).graph
    wl = Workload(kind="decode", batch=8, seq=1, context=2048)
    best = search(graph, wl, H100, 4, reserve_bytes=0.0).best.solution.objective_s
    for rule in ["layers.*.attention=replicate", "layers.*.mlp=tp(tp=2)", "*=dp", "lm_head=vocab"]:
        forced = search(graph, wl, H100, 4, force=[ForceRule.parse(rule)], reserve_bytes=0.0)
        assert forced.best.solution.objective_s >= best - 1e-15, rule
        pattern = rule.split("=")[0]
        strategy = ForceRule.parse(rule).strategy
        for name, s in forced.best.solution.assignment.items():
            if ForceRule.parse(rule).matches(name):
                assert s == strategy, (pattern, name, s)


def test_forced_degree_filters_meshes(load):
    graph = load(str(EXAMPLES / "llama.py")).graph
    wl = Workload(kind="decode", batch=8, seq=1, context=2048)
    r = search(graph, wl, H100, 4, force=[ForceRule.parse("layers.*.mlp=tp(tp=2)")])
    assert str(r.best.mesh) == "dp=2×tp=2"
    with pytest.raises(InfeasiblePlanError, match="tp=3"):
        search(graph, wl, H100, 4, force=[ForceRule.parse("layers.*.mlp=tp(tp=3)")])


@pytest.mark.parametrize(
    "text,needle",
    [
        ("layers.*.mlp", "BLOCK_GLOB=STRATEGY"),
        ("layers.*.mlp=warp", "known strategies"),
        ("layers.*.mlp=tp(zz=2)", "not a mesh axis"),
    ],
)
def test_force_syntax_errors(text, needle):
    with pytest.raises(InputError, match=needle):
        ForceRule.parse(text)


def test_gqa_heads_limit_tp(load):
    """tp must divide KV heads (no duplication): tiny Llama has 2 KV heads, so tp=4 attention
    is not offered and the reason names the numbers."""
    graph = load(str(EXAMPLES / "llama.py")).graph
    wl = Workload(kind="decode", batch=4, seq=1, context=512)
    r = search(graph, wl, H100, 4, force=[ForceRule.parse("layers.*.attention=tp")])
    assert str(r.best.mesh) == "dp=2×tp=2"
    excluded = [o.reason for o in r.outcomes if o.solution is None and "tp=4" in str(o.mesh)]
    assert any("kv_heads=2 is not divisible by tp=4" in e for e in excluded)


def _cli(*args: str, hash_seed: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed) if hash_seed is not None else None
    return subprocess.run(
        [sys.executable, "-m", "planner", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


def test_plan_cli_is_deterministic_and_explains(tmp_path):
    args = [
        "plan", str(EXAMPLES / "mixtral.py"), "--gpus", "4", "--workload", "decode",
        "--batch", "8", "--context", "2k",
    ]
    # Two processes with different string-hash seeds: set/dict order must not leak into output.
    a = _cli(*args, "--out", str(tmp_path / "a"), hash_seed="1")
    b = _cli(*args, "--out", str(tmp_path / "b"), hash_seed="2")
    assert b.returncode == 0, b.stderr
    assert a.returncode == 0, a.stderr
    for name in ("plan.json", "run_plan.py"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert list(plan)[:6] == ["schema_version", "model", "hardware", "workload", "mesh", "rank_map"]
    assert plan["hardware"]["hbm_bytes_per_s"] > 1e12
    assert plan["workload"]["context"] == 2048
    assert plan["solver"]["status"] == "OPTIMAL"
    assert len(plan["rank_map"]) == 4
    total = sum(plan["memory"]["breakdown"].values())
    assert total == pytest.approx(plan["memory"]["per_gpu_bytes"], rel=1e-9)
    e = _cli("explain", str(tmp_path / "a"))
    assert e.returncode == 0 and "Runner-ups" in e.stdout and "Binding constraints" in e.stdout


def test_infeasible_is_a_clear_error():
    r = _cli(
        "plan", str(EXAMPLES / "llama.py"), "--model-arg", "preset=llama3-8b", "--gpus", "2",
        "--batch", "64", "--context", "128k", "--out", "/tmp/helixplan-infeasible",
    )
    assert r.returncode == 2
    assert "GiB per GPU" in r.stderr and "GPUs are needed" in r.stderr
    assert "Traceback" not in r.stderr


def test_slo_without_batch_finds_largest_batch(load):
    from dataclasses import replace

    from planner.api import make_plan, make_plan_max_batch
    from planner.model_source import resolve_source

    loaded = load(str(EXAMPLES / "llama.py"), preset="llama3-8b")
    assert loaded.source == resolve_source(str(EXAMPLES / "llama.py"), {"preset": "llama3-8b"})
    wl = Workload(kind="decode", batch=1, seq=1, context=8192, ttl_slo_s=0.006)
    run = make_plan_max_batch(loaded, hardware="h100-sxm", gpus=4, workload=wl)
    b = run.plan.workload["batch"]
    assert b > 1 and run.plan.predicted["seconds"] <= 0.006
    with pytest.raises(InfeasiblePlanError):
        make_plan(loaded, hardware="h100-sxm", gpus=4, workload=replace(wl, batch=b + 1))
    with pytest.raises(InfeasiblePlanError, match="SLO"):
        make_plan_max_batch(loaded, hardware="h100-sxm", gpus=4, workload=replace(wl, ttl_slo_s=1e-6))


@pytest.mark.parametrize("out", ["/proc/helixplan-forbidden", "/etc/passwd"])
def test_unwritable_output_directory_is_a_clear_error(out):
    r = _cli("plan", str(EXAMPLES / "llama.py"), "--gpus", "2", "--out", out)
    assert r.returncode == 2 and "cannot be written" in r.stderr and "Traceback" not in r.stderr
