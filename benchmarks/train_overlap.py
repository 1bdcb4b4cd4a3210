"""Gradient reduction overlapped with backward, and level-3 (FSDP-style) prefetch and
freeing, in the generated training program. Ratios from one plan of examples/llama.py on
dp=2:

1. step time with the gradient buckets reduced while backward runs (the default: each
   bucket's async all-reduce starts from the gradient hooks as soon as the bucket is full)
   divided by the step time with the same buckets reduced after backward (`--no-overlap`),
   both at sharding level 0 (`--zero 0`). Below 1 means the overlap hides communication.
2. at level 3 (`--zero 3`), step time with the next block's all-gathers prefetched while a
   block computes (the default) divided by the same with every gather issued where it is
   read and waited for at once (`--no-overlap`, which also starts the gradient buckets after
   backward); and each rank's peak step bytes and peak gathered bytes, prefetch / not.
3. at level 3, peak step bytes with gathered weights freed (the default) divided by the
   same with `--keep-gathered` (gathered weights saved for backward, the way a plain
   differentiable all-gather keeps them), and the peak gathered bytes of both.

The plan (planned once, every block replicated over dp):

    helixplan plan examples/llama.py --model-arg ... --gpus 2 --workload train --batch B
      --seq T --zero 3 --recompute none --force '*=replicate'

then `run_plan.py --workload train --steps S` under torchrun, 2 CPU ranks, gloo, fp32,
OMP_NUM_THREADS=1, no --verify (exactness is the tests' business: tests/test_codegen_train.py,
tests/test_codegen_train_prefetch.py). Per step the slowest rank counts; the first --warmup
steps are dropped; the statistic is the median pooled over --rounds alternating launches
(each variant once per round, in turn), so a change of machine load hits all of them. Memory
is the program's own count (TensorCensus: bytes of op outputs alive at once during a step,
beyond the stored weights and optimizer state; GatheredWeights: bytes of all-gathered
level-3 weights alive at once); it does not depend on load.

    .venv/bin/python benchmarks/train_overlap.py [--rounds 2] [--steps 8] [--bucket-mb 4]

Caveat: gloo on CPU runs its collectives on background threads of the same cores as the
compute; on a machine with 2 cores for 2 ranks there is little idle time for the overlap to
fill, so the time ratios are a lower bound on what overlap buys where communication has its
own engine (NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import add_llama_size_arguments, llama_model_args, step_times  # noqa: E402

from planner.verify_runner import run_torchrun  # noqa: E402

NPROC = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_llama_size_arguments(p, layers=4, kv_heads_help="")
    p.set_defaults(hidden=512, ffn=1408)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--bucket-mb", type=float, default=4.0, help="gradient bucket size of the program")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per launch")
    p.add_argument("--warmup", type=int, default=2, help="steps dropped from each launch")
    p.add_argument("--rounds", type=int, default=2, help="alternating launches of each variant")
    p.add_argument("--out", help="keep the plan and run_plan.py here (default: a temporary folder)")
    return p.parse_args(argv)


def make_plan(a, out: Path) -> Path:
    cmd = [sys.executable, "-m", "planner", "plan", str(ROOT / "examples" / "llama.py")]
    for m in llama_model_args(a):
        cmd += ["--model-arg", m]
    cmd += ["--gpus", str(NPROC), "--workload", "train", "--batch", str(a.batch), "--seq", str(a.seq),
            "--zero", "3", "--recompute", "none", "--force", "*=replicate", "--out", str(out), "--json"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"helixplan plan failed:\n{r.stdout}\n{r.stderr}")
    plan = json.loads(r.stdout)
    if plan["mesh"].get("dp") != NPROC:
        raise SystemExit(f"expected a dp={NPROC} plan, got mesh {plan['mesh']}")
    return out / "run_plan.py"


def _peaks(results: list[dict]) -> dict:
    return {"peak_step_bytes": max(r["peak_step_bytes"] for r in results),
            "peak_gathered_bytes": max(r["peak_gathered_bytes"] for r in results),
            "level3_gathers": results[0]["level3_gathers"],
            "param_bytes": results[0]["param_bytes"]}


def main(argv=None) -> None:
    a = parse_args(argv)
    load_before = os.getloadavg()
    base = ["--backend", "gloo", "--workload", "train", "--batch", str(a.batch), "--seq", str(a.seq),
            "--steps", str(a.steps), "--bucket-mb", str(a.bucket_mb)]
    timed = {"overlap": ["--zero", "0"], "no_overlap": ["--zero", "0", "--no-overlap"],
             "l3_prefetch": ["--zero", "3"], "l3_no_prefetch": ["--zero", "3", "--no-overlap"]}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp)
        t0 = time.perf_counter()
        program = make_plan(a, out)
        print(f"planned in {time.perf_counter() - t0:.1f} s: {program}", flush=True)
        times: dict[str, list[float]] = {n: [] for n in timed}
        per_round: dict[str, list[float]] = {n: [] for n in timed}
        buckets, peaks = {}, {}
        for rnd in range(a.rounds):
            for name, extra in timed.items():
                t0 = time.perf_counter()
                res = run_torchrun(program, NPROC, [*base, *extra], timeout_s=600)
                ts = step_times(res, a.warmup)
                times[name] += ts
                per_round[name].append(statistics.median(ts))
                buckets[name] = (res[0]["grad_buckets"], res[0]["grad_buckets_started_in_backward"])
                peaks[name] = _peaks(res)
                print(f"round {rnd + 1} {name:14s}: median {statistics.median(ts) * 1e3:8.2f} ms over "
                      f"{len(ts)} steps; buckets {buckets[name][0]}, started in backward "
                      f"{buckets[name][1]} (launch {time.perf_counter() - t0:.1f} s, "
                      f"load {os.getloadavg()[0]:.2f})", flush=True)
        res = run_torchrun(program, NPROC, [*base, "--zero", "3", "--steps", "2", "--keep-gathered"], timeout_s=600)
        peaks["l3_keep"] = _peaks(res)
        for name in ("l3_prefetch", "l3_no_prefetch", "l3_keep"):
            print(f"{name}: {peaks[name]}", flush=True)

    load_after = os.getloadavg()
    median = {n: statistics.median(v) for n, v in times.items()}
    ratio = median["overlap"] / median["no_overlap"]
    l3_ratio = median["l3_prefetch"] / median["l3_no_prefetch"]
    pre, seq, keep = peaks["l3_prefetch"], peaks["l3_no_prefetch"], peaks["l3_keep"]
    step_ratio = pre["peak_step_bytes"] / seq["peak_step_bytes"]
    gathered_ratio = pre["peak_gathered_bytes"] / seq["peak_gathered_bytes"]
    keep_ratio = pre["peak_step_bytes"] / keep["peak_step_bytes"]
    mib = 2**20
    print(f"level 0, overlapped reduction : median step {median['overlap'] * 1e3:.2f} ms")
    print(f"level 0, after backward       : median step {median['no_overlap'] * 1e3:.2f} ms")
    print(f"ratio overlap / after backward = {ratio:.3f} (< 1: the overlap hides communication)")
    print(f"level 3, prefetch + overlap   : median step {median['l3_prefetch'] * 1e3:.2f} ms")
    print(f"level 3, gather on use        : median step {median['l3_no_prefetch'] * 1e3:.2f} ms")
    print(f"ratio prefetch / gather on use = {l3_ratio:.3f}")
    print(f"level 3 peak step bytes: prefetch {pre['peak_step_bytes'] / mib:.2f} MiB, on use "
          f"{seq['peak_step_bytes'] / mib:.2f} MiB (ratio {step_ratio:.3f}), kept "
          f"{keep['peak_step_bytes'] / mib:.2f} MiB (prefetch / kept {keep_ratio:.3f})")
    print(f"level 3 gathered weights alive at once: prefetch {pre['peak_gathered_bytes'] / mib:.2f} MiB, "
          f"on use {seq['peak_gathered_bytes'] / mib:.2f} MiB (ratio {gathered_ratio:.3f}), kept "
          f"{keep['peak_gathered_bytes'] / mib:.2f} MiB")
    print(f"machine: {os.cpu_count()} cores for {NPROC} ranks; load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f}")
    row = {
        "benchmark": "train_overlap", "model": "examples/llama.py", "model_args": llama_model_args(a),
        "ranks": NPROC, "mesh": {"dp": NPROC}, "backend": "gloo", "dtype": "float32", "omp_threads": 1,
        "batch": a.batch, "seq": a.seq, "bucket_mb": a.bucket_mb, "steps": a.steps, "warmup": a.warmup,
        "rounds": a.rounds, "buckets": buckets["overlap"][0],
        "median_s": {n: round(v, 6) for n, v in median.items()},
        "ratio": round(ratio, 4), "level3_prefetch_ratio": round(l3_ratio, 4),
        "per_round_median_s": {n: [round(x, 6) for x in v] for n, v in per_round.items()},
        "level3": peaks, "level3_prefetch_peak_step_ratio": round(step_ratio, 4),
        "level3_prefetch_gathered_ratio": round(gathered_ratio, 4),
        "level3_prefetch_vs_keep_peak_step_ratio": round(keep_ratio, 4),
        "cores": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
