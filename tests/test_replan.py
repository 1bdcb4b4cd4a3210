"""replan: a replica that lost GPUs is replanned on its largest even split, and the reduced
program is exact under torchrun."""

from __future__ import annotations

import json

import pytest

from ir.workload import Workload
from tests.conftest import EXAMPLES

SMALL = {"heads": "6", "kv_heads": "3", "hidden": "96", "ffn": "192"}


def _plan(load, tmp_path, gpus: int, force: list[str], batch: int = 4):
    from planner.api import make_plan, write_outputs

    loaded = load(str(EXAMPLES / "llama.py"), **SMALL)
    run = make_plan(loaded, hardware="h100-sxm", gpus=gpus, force=force,
                    workload=Workload(kind="decode", batch=batch, seq=1, context=16))
    write_outputs(run, tmp_path / "plan")
    return loaded, run.plan


def test_even_degrees_follow_heads_and_ffn(load):
    from planner.replan import even_degrees

    loaded = load(str(EXAMPLES / "llama.py"), **SMALL)
    ok, why = even_degrees(loaded.graph, 4)
    # 4 splits neither 6 heads nor 3 KV heads; 2 splits the heads but not the 3 KV heads.
    assert ok == [3, 1]
    assert "q_heads=6" in why[4] and "kv_heads=3" in why[2]


def test_replan_tp4_to_tp3_is_exact(load, tmp_path):
    from planner.replan import replan, write_replan
    from planner.verify_runner import verify_program

    loaded, plan = _plan(load, tmp_path, 4, ["layers.*.mlp=tp(tp=4)"])
    assert plan.mesh["tp"] == 4
    result = replan(plan, [3], loaded=loaded)
    (a,) = result.affected
    assert a.degree == 3 and a.surviving == [0, 1, 2]
    reduced = a.run.plan
    assert reduced.mesh["tp"] == 3
    assert {b.name: b.degrees for b in reduced.blocks if b.kind == "mlp"} == {
        "layers.0.mlp": {"tp": 3}, "layers.1.mlp": {"tp": 3}}
    assert [r["gpu"] for r in reduced.rank_map] == [0, 1, 2]
    assert result.kept_if_dropped == 0.0
    assert result.kept_if_replanned == pytest.approx(a.tokens_per_s / result.replica_tokens_per_s)
    paths = write_replan(result, tmp_path / "replan")
    summary = json.loads(paths["summary"].read_text())
    assert summary["affected"][0]["degree"] == 3
    report = verify_program(tmp_path / "replan" / "replica0" / "run_plan.py", reduced, nproc=3,
                            workload="decode", batch=4, seq=1, context=8, steps=3)
    assert report.passed, report.problems
    assert report.summary()["ok"] and report.summary()["nproc"] == 3


def test_replan_two_replicas_one_failed(load, tmp_path):
    from planner.replan import replan

    loaded, plan = _plan(load, tmp_path, 4, ["layers.*.mlp=tp(tp=2)"])
    assert (plan.mesh["dp"], plan.mesh["tp"]) == (2, 2)
    result = replan(plan, [1], loaded=loaded)
    (a,) = result.affected
    # Replica 0 holds GPUs 0 and 1; GPU 0 survives: degree 1. Dropping keeps 1 of 2 replicas.
    assert (a.replica, a.gpus, a.surviving, a.degree) == (0, [0, 1], [0], 1)
    assert result.kept_if_dropped == 0.5
    r = result.replica_tokens_per_s
    assert result.kept_if_replanned == pytest.approx((r + a.tokens_per_s) / (2 * r))
    assert result.kept_if_replanned > result.kept_if_dropped


def test_replan_cli(load, tmp_path, capsys):
    from planner.cli import main

    _plan(load, tmp_path, 4, ["layers.*.mlp=tp(tp=4)"])
    assert main(["replan", str(tmp_path / "plan" / "plan.json"), "--failed", "7"]) == 2
    assert "GPU(s) [7]" in capsys.readouterr().err
    out = tmp_path / "reduced"
    assert main(["replan", str(tmp_path / "plan" / "plan.json"), "--failed", "0", "--out", str(out)]) == 0
    summary = json.loads((out / "replan.json").read_text())
    assert summary["affected"][0]["surviving_gpus"] == [1, 2, 3]
    assert summary["throughput_kept_dropped"] == 0.0
    assert (out / "replica0" / "run_plan.py").is_file()
    reduced = json.loads((out / "replica0" / "plan.json").read_text())
    assert [r["gpu"] for r in reduced["rank_map"]] == [1, 2, 3]
