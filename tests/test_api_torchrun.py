"""The library API end to end under torchrun (2 ranks, gloo): `planner.parallelize` on the
plan `planner.plan` returned, on the same plan saved and loaded, and
`torch.compile(model, backend=planner.backend(...))`, each against the unsharded module.
One launch runs all three, and `parallelize` of a transformers model against its own
logits (examples/library.py, the README's example)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from planner.verify_runner import _free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_parallelize_and_compile_backend_match_the_unsharded_module(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), str(ROOT / "examples" / "library.py"),
           str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith('{"rank"')]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        tolerance = 1e-4 * r["ref_scale"]
        assert r["parallelize_err"] <= tolerance
        assert r["loaded_plan_err"] <= tolerance
        assert r["compile_err"] <= tolerance
        # The plans really shard: tp blocks and a vocabulary-split head, and each rank holds
        # well under the whole model (embedding and norms stay replicated).
        assert r["strategies"] == ["replicate", "tp", "vocab"]
        assert r["compile_plans"] == 1 and r["compile_strategies"] == r["strategies"]
        assert r["local_param_bytes"] < 0.6 * r["full_param_bytes"]
        # A transformers PreTrainedModel, parallelized as it is, against its own logits.
        assert r["hf_err"] <= 1e-4 * r["hf_ref_scale"]
        assert r["hf_strategies"] == ["replicate", "tp", "vocab"]
