"""Overhead of the generated program: decode step time of helixplan's generated `run_plan.py`
for a Megatron-TP plan of examples/llama.py, divided by the step time of the same model
parallelized with torch's `parallelize_module` (DTensor). Target: ratio <= 1.10.

Both run on 4 CPU ranks under torchrun, gloo, fp32, OMP_NUM_THREADS=1 per rank, with the
same weights (seeded `build_model`), tokens, batch, prompt and number of steps:

* generated — `helixplan plan examples/llama.py --gpus 4 --workload decode --force
  'layers.*.attention=tp(tp=4)' --force 'layers.*.mlp=tp(tp=4)' --force lm_head=replicate
  --force final_norm=replicate`, then `run_plan.py --workload decode` (no --verify: with it
  rank 0 runs the reference model between steps and the other ranks wait for it);
* DTensor — benchmarks/_dtensor_tp.py: ColwiseParallel q/k/v/gate/up, RowwiseParallel o/down
  on a 1-D DeviceMesh; embedding, norms and LM head replicated (the plan above, exactly).

What is timed (both sides, the same): a prompt of --context tokens is prefilled (untimed),
then --steps decode steps, one new token per sequence, batch --batch, reading a KV cache
preallocated for context + steps tokens (masked by cache_lens) and writing the step's K/V
into it. Per step the slowest rank's time counts; the first --warmup steps are dropped; the
statistic is the median over the remaining steps, pooled over --rounds alternating launches
(generated, DTensor, generated, DTensor, ...) so that a change in machine load hits both.

    .venv/bin/python benchmarks/codegen_overhead.py [--rounds 2] [--steps 40] [--with-verify]

Prints both medians, the ratio and one JSON line. --with-verify also launches the generated
program once with --verify (exactness against the single-process model, and its step time
under --verify for comparison; not used in the ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import add_llama_size_arguments, llama_model_args, plan_llama_decode, step_times  # noqa: E402

from planner.verify_runner import run_torchrun  # noqa: E402

NPROC = 4
TARGET = 1.10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_llama_size_arguments(p, layers=4, kv_heads_help="tp=4 must divide it")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=128, help="prompt tokens before decoding")
    p.add_argument("--steps", type=int, default=40, help="decode steps per launch")
    p.add_argument("--warmup", type=int, default=5, help="steps dropped from each launch")
    p.add_argument("--rounds", type=int, default=2, help="alternating launches of each program")
    p.add_argument("--with-verify", action="store_true", help="also run the generated program with --verify once")
    p.add_argument("--out", help="keep the plan and run_plan.py here (default: a temporary folder)")
    return p.parse_args(argv)


def make_plan(a, out: Path) -> dict:
    return plan_llama_decode(a, NPROC, [
        f"layers.*.attention=tp(tp={NPROC})", f"layers.*.mlp=tp(tp={NPROC})",
        "lm_head=replicate", "final_norm=replicate",
    ], out)


def launch(program: Path, argv: list[str]) -> list[dict]:
    return run_torchrun(program, NPROC, argv, timeout_s=600)


def main(argv=None) -> None:
    a = parse_args(argv)
    cores = os.cpu_count()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp)
        t0 = time.perf_counter()
        plan = make_plan(a, out)
        program = out / "run_plan.py"
        print(f"planned in {time.perf_counter() - t0:.1f} s: mesh {plan.get('mesh')}; {program}", flush=True)
        common = ["--batch", str(a.batch), "--context", str(a.context), "--steps", str(a.steps)]
        gen_argv = ["--backend", "gloo", "--workload", "decode", *common]
        dt_program = ROOT / "benchmarks" / "_dtensor_tp.py"
        dt_argv = ["--model-file", str(ROOT / "examples" / "llama.py"),
                   *[x for m in llama_model_args(a) for x in ("--model-arg", m)], *common, "--check"]

        gen, dt, dt_check = [], [], []
        for rnd in range(a.rounds):
            for name in ("generated", "dtensor"):
                t0 = time.perf_counter()
                if name == "generated":
                    res = launch(program, gen_argv)
                    times = step_times(res, a.warmup)
                    gen += times
                else:
                    res = launch(dt_program, dt_argv)
                    times = step_times(res, a.warmup)
                    dt += times
                    r0 = next(r for r in res if r["rank"] == 0)
                    dt_check.append({k: r0.get(k) for k in ("ok", "max_abs_err", "ref_scale")})
                print(f"round {rnd + 1} {name:9s}: median {statistics.median(times) * 1e3:7.2f} ms over "
                      f"{len(times)} steps (launch {time.perf_counter() - t0:.1f} s, "
                      f"load {os.getloadavg()[0]:.2f})", flush=True)

        verify = None
        if a.with_verify:
            res = launch(program, [*gen_argv, "--verify"])
            r0 = next(r for r in res if r["rank"] == 0)
            times = step_times(res, a.warmup)
            verify = {"ok": r0.get("ok"), "max_abs_err": r0.get("max_abs_err"),
                      "ref_scale": r0.get("ref_scale"), "median_s": statistics.median(times)}
            print(f"generated --verify: ok={verify['ok']} max_abs_err={verify['max_abs_err']:.2e}, "
                  f"median step {verify['median_s'] * 1e3:.2f} ms (rank 0 runs the reference "
                  f"between steps; not used in the ratio)", flush=True)

    load_after = os.getloadavg()
    g, d = statistics.median(gen), statistics.median(dt)
    ratio = g / d
    print(f"generated run_plan.py : median decode step {g * 1e3:.2f} ms ({len(gen)} steps)")
    print(f"DTensor TP baseline   : median decode step {d * 1e3:.2f} ms ({len(dt)} steps)")
    print(f"ratio generated / DTensor = {ratio:.3f} (target <= {TARGET}) -> {'PASS' if ratio <= TARGET else 'FAIL'}")
    print(f"machine: {cores} cores for {NPROC} ranks; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")
    row = {
        "benchmark": "codegen_overhead", "model": "examples/llama.py", "model_args": llama_model_args(a),
        "ranks": NPROC, "backend": "gloo", "dtype": "float32", "omp_threads": 1,
        "workload": "decode", "batch": a.batch, "context": a.context, "steps": a.steps,
        "warmup": a.warmup, "rounds": a.rounds,
        "generated_median_s": round(g, 6), "dtensor_median_s": round(d, 6), "ratio": round(ratio, 4),
        "target": TARGET, "pass": ratio <= TARGET, "dtensor_check": dt_check, "verify": verify,
        "cores": cores, "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
