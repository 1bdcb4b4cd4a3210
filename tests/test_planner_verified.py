"""The planner's own choice, for every example model, runs exactly as planned.

For decode and prefill on 2 and 4 ranks, `make_plan` (verified strategies only) picks a plan;
its generated program runs as threads of this process and matches the single-process model
on every step, with each rank's weight and KV bytes within 10% of plan.json."""

from __future__ import annotations

import pytest

from ir.workload import Workload
from planner.api import make_plan
from planner.verify_runner import judge, program_args, run_threaded, write_run_plan
from tests.conftest import EXAMPLES

CASES = [
    (model, kind, nproc)
    for model in ("llama", "gpt2", "mixtral", "deepseek")
    for kind in ("decode", "prefill")
    for nproc in (2, 4)
]


@pytest.mark.parametrize("model,kind,nproc", CASES, ids=[f"{m}-{k}-{n}" for m, k, n in CASES])
def test_ilp_choice_verifies(load, tmp_path, model, kind, nproc):
    loaded = load(str(EXAMPLES / f"{model}.py"))
    if kind == "decode":
        wl = Workload(kind="decode", batch=4, seq=1, context=8)
        argv = program_args(workload="decode", batch=4, seq=1, context=8, steps=3)
    else:
        wl = Workload(kind="prefill", batch=4, seq=8, context=0)
        argv = program_args(workload="prefill", batch=4, seq=8, context=0, steps=1)
    run = make_plan(loaded, hardware="h100-sxm", gpus=nproc, workload=wl)
    program = write_run_plan(run.graph, run.plan, tmp_path)
    results = run_threaded(program, nproc, argv)
    report = judge(run.plan, results, nproc)
    assert report.ok and report.memory_ok, (report.max_abs_err, report.problems, run.plan.mesh)


def test_ilp_chooses_helix_for_long_context_and_it_verifies(load, tmp_path):
    """Tiny Llama, one sequence with a 1M-token cache on 4 GPUs: the optimum is Helix
    (kvp=2 × tpa=2; the 2 KV heads cap plain TP at 2). Its program, run over 40 decode steps
    (appends wrap around every KVP rank), matches the model exactly."""
    loaded = load(str(EXAMPLES / "llama.py"))
    wl = Workload(kind="decode", batch=1, seq=1, context=1 << 20)
    run = make_plan(loaded, hardware="h100-sxm", gpus=4, workload=wl)
    attention = run.plan.block("layers.0.attention")
    assert attention.strategy == "helix" and run.plan.mesh["kvp"] > 1
    program = write_run_plan(run.graph, run.plan, tmp_path)
    argv = program_args(workload="decode", batch=1, seq=1, context=8, steps=40)
    results = run_threaded(program, 4, argv)
    report = judge(run.plan, results, 4)
    assert report.ok and report.memory_ok, (report.max_abs_err, report.problems)
