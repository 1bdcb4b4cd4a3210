"""Wall and CPU time of `helixplan plan` on 64 GPUs (the CLI as a fresh process, writing
plan.json, report.md and, where the plan lowers, run_plan.py): cold (empty trace cache) and
warm (the same command again, the trace cached), for decode and train, with the ILP's size.

Targets on a 2-core machine: cold under 10 s and warm under 1 s for Llama-3-8B,
Llama-3.1-405B and DeepSeek-V3. For scale: meta-pytorch/autoparallel took 218 s wall (95 s in
its solver) to plan Llama-3-8B training on an 8x8 mesh on this kind of machine.

`python benchmarks/plan_time.py [MODEL ...] [--decode-only]`; MODEL is a name below."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from _common import load_note, run_cli_timed

MODELS = [
    ("llama3-8b", ["examples/llama.py", "--model-arg", "preset=llama3-8b"]),
    ("llama3.1-405b", ["examples/llama.py", "--model-arg", "preset=llama3.1-405b"]),
    ("deepseek-v3", ["examples/deepseek.py", "--model-arg", "preset=deepseek-v3"]),
]
WORKLOADS = [
    ("decode", ["--workload", "decode", "--batch", "64", "--context", "32k"]),
    ("train", ["--workload", "train", "--batch", "64", "--seq", "4k"]),
]
# Planner speed is measured over every applicable strategy (MoE and latent attention are not
# yet verified end to end, so the default, verified-only search cannot place DeepSeek-V3);
# H200s so that Llama-3.1-405B training fits on 64 GPUs.
COMMON = ["--hardware", "h200", "--gpus", "64", "--allow-unverified"]


def main() -> None:
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    workloads = WORKLOADS[:1] if "--decode-only" in sys.argv else WORKLOADS
    print(load_note(), flush=True)
    rows = []
    for model, margs in MODELS:
        if names and model not in names:
            continue
        for wname, wargs in workloads:
            with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
                args = ["plan", *margs, *COMMON, *wargs, "--out", out, "--json"]
                cold, cold_cpu, text = run_cli_timed(args, cache_dir=cache, allow_exit_2=True)
                warm, warm_cpu, _ = run_cli_timed(args, cache_dir=cache, allow_exit_2=True)
                program = (Path(out) / "run_plan.py").is_file()
            row = {"model": model, "workload": wname, "cold_s": round(cold, 2),
                   "cold_cpu_s": round(cold_cpu, 2), "warm_s": round(warm, 2),
                   "warm_cpu_s": round(warm_cpu, 2), "run_plan_py": program}
            times = (f"{model:14s} {wname:6s} cold {cold:6.2f} s ({cold_cpu:5.2f} s CPU)  "
                     f"warm {warm:5.2f} s ({warm_cpu:4.2f} s CPU)")
            if text.startswith("ERROR "):
                row["infeasible"] = " ".join(text[6:].split())[:160]
                rows.append(row)
                print(f"{times}  (no plan: {row['infeasible']})", flush=True)
                continue
            plan = json.loads(text)
            s = plan["solver"]
            row.update(mesh=plan["mesh"], status=s["status"], ilp_variables=s["num_variables"],
                       ilp_constraints=s["num_constraints"], meshes=s["meshes_tried"],
                       predicted_s=plan["predicted"]["seconds"])
            rows.append(row)
            print(f"{times}  {s['status']} {s['num_variables']} vars  {s['meshes_tried']} meshes  "
                  f"run_plan.py: {'yes' if program else 'no'}", flush=True)
    print(load_note())
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
