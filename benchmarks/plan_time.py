"""Wall and CPU time of `helixplan plan` on 64 GPUs (the CLI as a fresh process, writing
plan.json, report.md and, where the plan lowers, run_plan.py): cold (empty trace cache) and
warm (the same command again, the trace cached), for decode and train, with the ILP's size.

Targets on a 2-core machine: cold under 10 s and warm under 1 s for Llama-3-8B,
Llama-3.1-405B and DeepSeek-V3. For scale: meta-pytorch/autoparallel took 218 s wall (95 s in
its solver) to plan Llama-3-8B training on an 8x8 mesh on this kind of machine.

`python benchmarks/plan_time.py [MODEL ...] [--decode-only]`; MODEL is a name below, or
`train-8b` for the training case as autoparallel ran it:
Llama-3-8B training (batch 64 × 4k tokens, AdamW) on 64 H100s, verified strategies only,
every mesh of 64 GPUs searched (8×8 among them) with the per-block dp sharding level and
recomputation decisions; once with identical layers sharing one decision and once with
`--per-layer` (every block its own decision, the size autoparallel solves)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from _common import load_note, run_cli, run_cli_timed

MODELS = [
    ("llama3-8b", ["examples/llama.py", "--model-arg", "preset=llama3-8b"]),
    ("llama3.1-405b", ["examples/llama.py", "--model-arg", "preset=llama3.1-405b"]),
    ("deepseek-v3", ["examples/deepseek.py", "--model-arg", "preset=deepseek-v3"]),
]
DECODE = ["--workload", "decode", "--batch", "64", "--context", "32k"]
# Training at a size that fits 64 H200s without pipeline parallelism (which the planner does
# not offer): Llama-3.1-405B at batch 64 × 4k needs ~168 GiB per GPU, so batch 16; DeepSeek-V3
# with AdamW needs ~169 GiB at any batch (optimizer state alone), so SGD.
TRAIN = {
    "llama3-8b": ["--workload", "train", "--batch", "64", "--seq", "4k"],
    "llama3.1-405b": ["--workload", "train", "--batch", "16", "--seq", "4k"],
    "deepseek-v3": ["--workload", "train", "--batch", "16", "--seq", "4k", "--optimizer", "sgd"],
}
# Planner speed is measured over every applicable strategy (--allow-unverified: the largest
# search).
COMMON = ["--hardware", "h200", "--gpus", "64", "--allow-unverified"]
TRAIN_8B = ["examples/llama.py", "--model-arg", "preset=llama3-8b", "--hardware", "h100-sxm",
            "--gpus", "64", "--workload", "train", "--batch", "64", "--seq", "4k"]
TRAIN_8B_CASES = [("train-8b", []), ("train-8b per-layer", ["--per-layer"])]


def train_8b(rows: list[dict]) -> None:
    for name, extra in TRAIN_8B_CASES:
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
            args = ["plan", *TRAIN_8B, *extra, "--out", out, "--json"]
            cold, text = run_cli(args, cache_dir=cache)
            warm, _ = run_cli(args, cache_dir=cache)
        plan = json.loads(text)
        s = plan["solver"]
        levels = sorted({b["extras"].get("zero", 0) for b in plan["blocks"]})
        rows.append({
            "model": "llama3-8b", "workload": name, "cold_s": round(cold, 2),
            "warm_s": round(warm, 2), "mesh": plan["mesh"], "status": s["status"],
            "ilp_variables": s["num_variables"], "ilp_constraints": s["num_constraints"],
            "meshes": s["meshes_tried"], "predicted_s": plan["predicted"]["seconds"],
            "zero_levels": levels, "autoparallel_s": AUTOPARALLEL_S,
            "ratio_vs_autoparallel": round(cold / AUTOPARALLEL_S, 4),
        })
        print(f"{name:20s} cold {cold:6.2f} s  warm {warm:5.2f} s  {s['status']} "
              f"{s['num_variables']} vars {s['num_constraints']} constraints  mesh {plan['mesh']}  "
              f"zero levels {levels}  cold/autoparallel {cold / AUTOPARALLEL_S:.3f}", flush=True)


AUTOPARALLEL_S = 218.0  # meta-pytorch/autoparallel, Llama-3-8B training on 8x8, same machine kind


def main() -> None:
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    print(load_note(), flush=True)
    rows: list[dict] = []
    if not names or "train-8b" in names:
        train_8b(rows)
    for model, margs in MODELS:
        if names and model not in names:
            continue
        workloads = [("decode", DECODE)]
        if "--decode-only" not in sys.argv:
            workloads.append(("train", TRAIN[model]))
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
