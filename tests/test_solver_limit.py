"""Solver limits: a time limit too short for a proof returns the best feasible plan with its
proven gap, and plan.json, report.md and the CLI say so; without the limit the same instance
is OPTIMAL with gap 0 and its bound equal to its objective."""

from __future__ import annotations

import json

import pytest

from ir.workload import Workload
from planner.api import make_plan
from planner.cli import main
from tests.conftest import EXAMPLES

LLAMA = str(EXAMPLES / "llama.py")
# Llama-3-8B, every layer its own decision (--per-layer): ~1100 binaries per mesh, ten meshes.
BIG = dict(gpus=8, per_layer=True, hardware="h100-sxm")
WORKLOAD = Workload(kind="decode", batch=64, seq=1, context=32768)


@pytest.fixture(scope="module")
def big_model():
    from tests.conftest import loaded

    return loaded(LLAMA, preset="llama3-8b")


def test_time_limit_reports_a_consistent_gap(big_model):
    proven = make_plan(big_model, workload=WORKLOAD, time_limit_s=120, **BIG).plan.solver
    assert proven["status"] == "OPTIMAL" and proven["gap"] == 0.0
    assert proven["bound_s"] == proven["objective_s"]

    # One millisecond per mesh is far too short for CP-SAT to prove anything on this size.
    cut = make_plan(big_model, workload=WORKLOAD, time_limit_s=1e-3, **BIG).plan.solver
    assert cut["status"] == "FEASIBLE" and cut["time_limit_s"] == 1e-3
    assert 0.0 < cut["gap"] <= 1.0
    optimum = proven["objective_s"]
    # The returned plan is feasible, so no better than the optimum; its bound is a true
    # lower bound, so no higher than the optimum; and the gap is exactly what they say.
    assert cut["objective_s"] >= optimum * (1 - 1e-9)
    assert cut["bound_s"] <= optimum * (1 + 1e-9)
    assert cut["gap"] == pytest.approx((cut["objective_s"] - cut["bound_s"]) / cut["objective_s"])


def test_cli_reports_the_gap(big_model, tmp_path, capsys):
    out = tmp_path / "plan"
    code = main([
        "plan", LLAMA, "--model-arg", "preset=llama3-8b", "--gpus", "8", "--per-layer",
        "--batch", "64", "--context", "32k", "--time-limit", "0.001", "--out", str(out),
    ])
    stdout = " ".join(capsys.readouterr().out.split())
    assert code == 0
    solver = json.loads((out / "plan.json").read_text())["solver"]
    assert solver["status"] == "FEASIBLE"
    gap_text = f"{solver['gap']:.1%}"
    assert f"[FEASIBLE, gap {gap_text}]" in stdout
    assert f"this plan is within {gap_text} of the best possible" in stdout
    report = (out / "report.md").read_text()
    assert f"Solver: FEASIBLE, gap {gap_text} (proven lower bound" in report
    assert "time limit 0.001 s per mesh" in report
