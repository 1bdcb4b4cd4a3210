"""`helixplan sweep`: points with and without Helix, the frontier, pareto.json/png."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from planner.sweep import SweepPoint, pareto_front
from tests.conftest import EXAMPLES, ROOT


def test_pareto_front_keeps_only_undominated():
    pts = [
        SweepPoint(1, 8, False, "a", 0.010),  # 100 tok/s/user, 12.5 /GPU
        SweepPoint(8, 8, False, "b", 0.020),  # 50 /user, 50 /GPU
        SweepPoint(4, 8, False, "c", 0.025),  # 40 /user, 20 /GPU: dominated by b
        SweepPoint(2, 16, False, "d", 0.010),  # 100 /user, 12.5 /GPU: ties a
    ]
    front = pareto_front(pts)
    assert [p.plan for p in front] == ["a", "b"]
    users = [p.tokens_per_s_per_user for p in front]
    gpus = [p.tokens_per_s_per_gpu for p in front]
    assert users == sorted(users, reverse=True) and gpus == sorted(gpus)


def test_sweep_cli_writes_both_frontiers(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "planner", "sweep", str(EXAMPLES / "llama.py"), "--gpus", "2,4",
         "--context", "16k,64k", "--hardware", "h100-sxm,b200", "--batches", "1,4,16",
         "--workers", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "pareto.json").read_text())
    keys = {"batch", "gpus", "context", "hardware", "plan", "ttl_seconds",
            "tokens_per_s_per_user", "tokens_per_s_per_gpu", "helix"}
    assert data["points"] and all(set(p) == keys for p in data["points"])
    assert {p["helix"] for p in data["points"]} == {True, False}
    assert len(data["points"]) == 2 * 2 * 2 * 3 * 2 - len(data["skipped"])
    assert {(p["hardware"], p["context"]) for p in data["points"]} == {
        (h, c) for h in ("h100-sxm", "b200") for c in (16384, 65536)
    }
    # Input order whatever the workers: hardware, context, GPUs, batch, then without/with Helix.
    order = [(p["hardware"] == "b200", p["context"], p["gpus"], p["batch"], p["helix"])
             for p in data["points"]]
    assert order == sorted(order)
    for p in data["points"]:
        assert abs(p["tokens_per_s_per_gpu"] - p["batch"] / p["ttl_seconds"] / p["gpus"]) < 1e-6
    # Allowing Helix never makes the best plan slower at the same design point.
    by_key = {(p["hardware"], p["context"], p["batch"], p["gpus"], p["helix"]): p["ttl_seconds"]
              for p in data["points"]}
    for (hw, c, b, g, h), ttl in by_key.items():
        if h and (hw, c, b, g, False) in by_key:
            assert ttl <= by_key[(hw, c, b, g, False)] * (1 + 1e-9)
    # A longer context never makes the best plan faster.
    for (hw, c, b, g, h), ttl in by_key.items():
        if c == 65536 and (hw, 16384, b, g, h) in by_key:
            assert ttl >= by_key[(hw, 16384, b, g, h)] * (1 - 1e-9)
    # One frontier per (hardware, context), each the Pareto front of that slice's points.
    assert [(f["hardware"], f["context"]) for f in data["frontiers"]] == [
        ("h100-sxm", 16384), ("h100-sxm", 65536), ("b200", 16384), ("b200", 65536)
    ]
    for f in data["frontiers"]:
        for helix, key in ((True, "helix"), (False, "no_helix")):
            pts = [SweepPoint(p["batch"], p["gpus"], p["helix"], p["plan"], p["ttl_seconds"],
                              p["context"], p["hardware"]) for p in data["points"]
                   if (p["hardware"], p["context"], p["helix"]) == (f["hardware"], f["context"], helix)]
            assert f[key] == [p.to_dict() for p in pareto_front(pts)]
    assert (tmp_path / "pareto.png").stat().st_size > 10_000


def test_sweep_matches_the_full_search_and_any_worker_count(load):
    """The sweep's shortcuts (one block per shared group, lower-bound pruning, prices and the
    best time handed from the search without Helix to the one with it) give the optimum of
    the full per-block search at every point; two worker processes give the same points in
    the same order as one."""
    from cost_models import load_hardware
    from ir.errors import InfeasiblePlanError
    from ir.workload import Workload
    from passes.parallelize.search import search
    from passes.parallelize.strategies import DEFAULT_STRATEGIES
    from planner.sweep import design_points, sweep

    loaded = load(str(EXAMPLES / "llama.py"))
    hardware = [load_hardware("h100-sxm"), load_hardware("gb200-nvl72")]
    grid = design_points(hardware, [4096, 1 << 20], [2, 4, 8], [1, 4, 32])
    workload = Workload(kind="decode", batch=1, seq=1, context=4096)
    serial, skipped = sweep(loaded, grid, workload=workload)
    parallel, skipped2 = sweep(loaded, grid, workload=workload, workers=2)
    assert parallel == serial and skipped2 == skipped

    got = {(p.hardware, p.context, p.gpus, p.batch, p.helix): p for p in serial}
    solved = 0
    for point in grid:
        wl = Workload(kind="decode", batch=point.batch, seq=1, context=point.context)
        for helix in (False, True):
            allowed = DEFAULT_STRATEGIES if helix else DEFAULT_STRATEGIES - {"helix"}
            key = (point.hardware.name, point.context, point.gpus, point.batch, helix)
            try:
                full = search(loaded.graph, wl, point.hardware, point.gpus, strategies=allowed,
                              top_k=1)
            except InfeasiblePlanError:
                assert key not in got
                continue
            solved += 1
            assert got[key].ttl_seconds == pytest.approx(full.best.solution.objective_s, rel=1e-9)
            assert got[key].plan.split()[0] == str(full.best.mesh)
    assert solved >= 20 and any(p.helix and "helix" in p.plan for p in serial)


@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_compact_program_has_the_full_programs_optimum(load, kind):
    """One block per shared group (n-fold times and memory, n-fold edges between groups,
    an edge inside a group priced at its option's own resharding) solves to the optimum of
    the block-by-block program on every mesh. An extra edge between two blocks of one group
    exercises the inside-group case, which the example models do not have."""
    from cost_models import CostModel, load_hardware
    from ir.workload import Workload
    from passes.parallelize.build import _NoOption, build_problem, hidden_edges
    from passes.parallelize.context import PlanContext
    from passes.parallelize.ilp import solve
    from passes.parallelize.search import mesh_candidates, workspace_bytes
    from passes.parallelize.strategies import BY_NAME

    graph = load(str(EXAMPLES / "llama.py")).graph
    edges = dict(hidden_edges(graph))
    first, second = [b for b in graph.blocks if b.group == graph.blocks[1].group][:2]
    edges[(first.name, second.name)] = first.dims.get("hidden") or 64
    hw = load_hardware("h100-sxm")
    wl = Workload(kind=kind, batch=8, seq=1 if kind == "decode" else 64, context=256)
    cost = CostModel(hardware=hw)
    compared = 0
    for mesh in mesh_candidates(8, kvp=kind == "decode"):
        if wl.batch % mesh.size("dp"):
            continue
        ctx = PlanContext(workload=wl, cost=cost, mesh=mesh)
        common = dict(capacity_bytes=float(hw.hbm_capacity_bytes), force=[], time_budget_s=None,
                      share_groups=True, edges=edges, allowed=frozenset(BY_NAME),
                      fixed_bytes=workspace_bytes(graph, wl, mesh, ctx.act_bytes, 2**30))
        try:
            full = build_problem(graph, ctx, **common)
        except _NoOption:  # a block has no option on this mesh: the compact build says so too
            with pytest.raises(_NoOption):
                build_problem(graph, ctx, compact=True, **common)
            continue
        compact = build_problem(graph, ctx, compact=True, **common)
        assert len(compact.problem.blocks) == len({b.group for b in graph.blocks})
        a = solve(full.problem, top_k=1)
        b = solve(compact.problem, top_k=1)
        assert b.objective_s == pytest.approx(a.objective_s, rel=1e-12)
        assert b.memory_bytes == pytest.approx(a.memory_bytes, rel=1e-12)
        compared += 1
    assert compared >= 3
