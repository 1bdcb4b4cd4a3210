"""`helixplan sweep`: points with and without Helix, the frontier, pareto.json/png."""

from __future__ import annotations

import json
import subprocess
import sys

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
         "--context", "64k", "--batches", "1,4,16", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "pareto.json").read_text())
    keys = {"batch", "gpus", "plan", "ttl_seconds", "tokens_per_s_per_user", "tokens_per_s_per_gpu", "helix"}
    assert data["points"] and all(set(p) == keys for p in data["points"])
    assert {p["helix"] for p in data["points"]} == {True, False}
    assert len(data["points"]) == 2 * 2 * 3 - len(data["skipped"])
    for p in data["points"]:
        assert abs(p["tokens_per_s_per_gpu"] - p["batch"] / p["ttl_seconds"] / p["gpus"]) < 1e-6
    # Allowing Helix never makes the best plan slower at the same (batch, GPUs).
    by_key = {(p["batch"], p["gpus"], p["helix"]): p["ttl_seconds"] for p in data["points"]}
    for (b, g, h), ttl in by_key.items():
        if h and (b, g, False) in by_key:
            assert ttl <= by_key[(b, g, False)] * (1 + 1e-9)
    assert (tmp_path / "pareto.png").stat().st_size > 10_000
