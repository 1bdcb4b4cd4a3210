"""End-to-end: `helixplan verify` launching generated programs under torchrun (CPU, gloo).

Each launch costs 5-15 s (mostly `import torch` per rank), so only these run under real
torchrun; the full strategy matrix runs in one process in tests/test_codegen.py.

    what                                   model  ranks  mesh      workload  strategies
    plan dir, hand-made plan               llama  2      tp2       decode    tp + vocab
    plan dir, all collective kinds         gpt2   4      dp2xtp2   prefill   attn dp, mlp tp_sp,
                                                                             vocab (a2a, rs, ag, ar)
    planted error (one all-reduce removed) llama  2      tp2       decode    tp + vocab -> exit 1
    model file, planned by the planner     llama  2      dp2       decode    planner's choice
    plan dir, hand-made Helix plan         llama  4      kvp2xtp2  decode    helix (hopb=2, 8 steps,
                                                                             append_block 4) / mlp tp
                                                                             / vocab over kvp×tp
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from planner.verify_runner import write_run_plan
from tests.conftest import ROOT
from tests.test_codegen import ATTN_DP_MLP_SP, DECODE, PREFILL, TP, make_plan

pytestmark = pytest.mark.slow


def verify(*args: str) -> tuple[int, dict | None, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "planner", "verify", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("{")), None)
    return proc.returncode, (json.loads(line) if line else None), proc.stdout + proc.stderr


def plan_dir(load, tmp_path, model, mesh, strategies, workload):
    graph = load(str(ROOT / "examples" / f"{model}.py")).graph
    plan = make_plan(graph, mesh, strategies, workload)
    plan.save(tmp_path / "plan.json")
    write_run_plan(graph, plan, tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def llama_tp2(tmp_path_factory):
    from tests.conftest import loaded

    return plan_dir(loaded, tmp_path_factory.mktemp("llama_tp2"), "llama", {"tp": 2}, TP, DECODE)


def test_verify_plan_dir_decode(llama_tp2):
    code, out, log = verify(str(llama_tp2), "--nproc", "2", "--steps", "3")
    assert code == 0, log
    assert out["ok"] is True and out["nproc"] == 2
    assert out["max_abs_err"] <= 1e-4 * out["ref_scale"]


def test_verify_every_collective_kind_on_four_ranks(load, tmp_path):
    d = plan_dir(load, tmp_path, "gpt2", {"dp": 2, "tp": 2}, ATTN_DP_MLP_SP, PREFILL)
    text = (d / "run_plan.py").read_text()
    for call in ("all_to_all_single", "reduce_scatter_tensor", "all_gather_into_tensor", "all_reduce"):
        assert f"comm.{call}(" in text
    code, out, log = verify(str(d), "--nproc", "4", "--batch", "4", "--seq", "4", "--context", "4")
    assert code == 0, log
    assert out["ok"] is True and out["nproc"] == 4


def test_planted_missing_all_reduce_is_caught(llama_tp2, tmp_path):
    planted = tmp_path / "planted"
    shutil.copytree(llama_tp2, planted)
    program = planted / "run_plan.py"
    text = program.read_text()
    # drop the MLP's all-reduce (and its wait): each rank keeps only its partial sum
    issue = re.search(r"^ +(\w+) = comm\.all_reduce\(down_proj_sum.*\n", text, re.M)
    assert issue, "the MLP all-reduce was not found"
    text = text.replace(issue.group(0), "")
    text = re.sub(rf"^ +{issue.group(1)}\.wait\(\).*\n", "", text, flags=re.M)
    program.write_text(text)
    code, out, log = verify(str(planted), "--nproc", "2", "--steps", "1")
    assert code == 1, log
    assert out["ok"] is False and out["max_abs_err"] > 1e-4 * out["ref_scale"]


def test_verify_model_file_plans_then_checks(tmp_path):
    code, out, log = verify(
        str(ROOT / "examples" / "llama.py"), "--nproc", "2", "--steps", "2", "--out", str(tmp_path)
    )
    assert code == 0, log
    assert out["ok"] is True
    assert (tmp_path / "plan.json").is_file() and (tmp_path / "run_plan.py").is_file()


def test_verify_helix_hopb2_on_four_ranks(load, tmp_path):
    """Helix kvp=2 x tp=2 with HOP-B (2 batch slices, each slice's all-to-all async and
    waited after the next slice's partial attention), 8 decode steps so the round-robin KV
    appends (append_block 4) wrap around both kvp ranks, under real torchrun/gloo."""
    from tests.test_codegen_helix import helix_plan

    graph = load(str(ROOT / "examples" / "llama.py")).graph
    plan = helix_plan(graph, {"kvp": 2, "tp": 2}, hopb=2)
    plan.save(tmp_path / "plan.json")
    text = write_run_plan(graph, plan, tmp_path).read_text()
    assert text.count("comm.all_to_all_single(") >= 2 and "async_op=True" in text
    code, out, log = verify(str(tmp_path), "--nproc", "4", "--steps", "8")
    assert code == 0, log
    assert out["ok"] is True and out["nproc"] == 4
    assert out["max_abs_err"] <= 1e-4 * out["ref_scale"]
