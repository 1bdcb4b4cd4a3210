"""HOP-B overlap in the generated program: decode step time of a Helix plan of
examples/llama.py with HOP-B on (--hopb batch slices, each slice's KV all-to-all issued async
and waited after the next slice's partial attention), divided by the step time of the same
plan with hopb=1 (one all-to-all, waited at once). Below 1 means the overlap hides some of
the all-to-all.

Both run on 4 CPU ranks under torchrun, gloo, fp32, OMP_NUM_THREADS=1 per rank, with the
same weights (seeded `build_model`), tokens, batch, prompt and number of steps. The two plans
differ only in hopb:

    helixplan plan examples/llama.py --model-arg ... --gpus 4 --workload decode --batch 8
      --context N --force 'layers.*.attention=helix(kvp=2,tpa=2,hopb=H)'
      --force 'layers.*.mlp=tp(kvp=2,tp=2)' --force 'embedding=vocab(kvp=2,tp=2)'
      --force 'lm_head=vocab(kvp=2,tp=2)'

(the FFN, embedding and LM head over the joined kvp×tp group, as Helix lays them out), then
`run_plan.py --workload decode` without --verify. --mesh kvp4 uses kvp=4, tpa=1.

What is timed: a prompt of --context tokens is prefilled (untimed), then --steps decode
steps, one new token per sequence, batch --batch, each rank reading its 1/kvp share of the
KV cache. The default sizes (8 layers, batch 8, context 512) make per-slice attention over
the local KV comparable to the all-to-all of the partial outputs. Per step the slowest rank's
time counts; the first --warmup steps are dropped; the statistic is the median over the
remaining steps, pooled over --rounds alternating launches (hopb, hopb=1, hopb, hopb=1, ...)
so that a change in machine load hits both.

    .venv/bin/python benchmarks/helix_overlap.py [--hopb 4] [--rounds 2] [--steps 25] [--context 512]

Prints both medians, the ratio and one JSON line. Caveat: gloo on CPU runs its collectives
on background threads of the same cores as the compute; on a machine with fewer cores than
4 ranks (plus gloo's threads) there is little idle time for the overlap to fill, so the
ratio shows mostly the cost of slicing, not what HOP-B buys on GPUs.
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
MESHES = {"kvp2xtp2": (2, 2), "kvp4": (4, 1)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_llama_size_arguments(p, layers=8, kv_heads_help="tpa must divide it")
    p.add_argument("--batch", type=int, default=8, help="hopb must divide it")
    p.add_argument("--context", type=int, default=512, help="prompt tokens (prefill untimed; 2048 costs ~2.5 min a launch on 2 cores)")
    p.add_argument("--mesh", choices=tuple(MESHES), default="kvp2xtp2")
    p.add_argument("--hopb", type=int, default=4, help="HOP-B batch slices of the overlapped plan")
    p.add_argument("--steps", type=int, default=25, help="decode steps per launch")
    p.add_argument("--warmup", type=int, default=5, help="steps dropped from each launch")
    p.add_argument("--rounds", type=int, default=2, help="alternating launches of each program")
    p.add_argument("--out", help="keep the plans and run_plan.py here (default: a temporary folder)")
    return p.parse_args(argv)


def make_plan(a, hopb: int, out: Path) -> dict:
    kvp, tpa = MESHES[a.mesh]
    group = f"kvp={kvp},tp={tpa}" if tpa > 1 else f"kvp={kvp}"
    plan = plan_llama_decode(a, NPROC, [
        f"layers.*.attention=helix(kvp={kvp},tpa={tpa},hopb={hopb})", f"layers.*.mlp=tp({group})",
        f"embedding=vocab({group})", f"lm_head=vocab({group})",
    ], out)
    got = {b["extras"].get("hopb") for b in plan["blocks"] if b["strategy"] == "helix"}
    if got != {hopb}:
        raise SystemExit(f"the plan's Helix blocks have hopb {got}, asked for {hopb}")
    return plan


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.hopb < 2 or a.batch % a.hopb:
        raise SystemExit(f"--hopb {a.hopb} must be >= 2 and divide --batch {a.batch}")
    cores = os.cpu_count()
    load_before = os.getloadavg()
    names = {f"hopb{a.hopb}": a.hopb, "hopb1": 1}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out) if a.out else Path(tmp)
        programs = {}
        for name, h in names.items():
            t0 = time.perf_counter()
            plan = make_plan(a, h, out / name)
            programs[name] = out / name / "run_plan.py"
            print(f"{name}: planned in {time.perf_counter() - t0:.1f} s: mesh {plan.get('mesh')}; "
                  f"predicted step {plan.get('predicted', {}).get('seconds')} s; {programs[name]}",
                  flush=True)
        argv_ = ["--backend", "gloo", "--workload", "decode", "--batch", str(a.batch),
                 "--context", str(a.context), "--steps", str(a.steps)]
        times: dict[str, list[float]] = {n: [] for n in names}
        per_round: dict[str, list[float]] = {n: [] for n in names}
        for rnd in range(a.rounds):
            for name in names:
                t0 = time.perf_counter()
                res = run_torchrun(programs[name], NPROC, argv_, timeout_s=600)
                ts = step_times(res, a.warmup)
                times[name] += ts
                per_round[name].append(statistics.median(ts))
                print(f"round {rnd + 1} {name:6s}: median {statistics.median(ts) * 1e3:7.2f} ms over "
                      f"{len(ts)} steps (launch {time.perf_counter() - t0:.1f} s, "
                      f"load {os.getloadavg()[0]:.2f})", flush=True)

    load_after = os.getloadavg()
    on, off = (statistics.median(times[n]) for n in names)
    ratio = on / off
    print(f"Helix hopb={a.hopb} : median decode step {on * 1e3:.2f} ms ({len(times[f'hopb{a.hopb}'])} steps)")
    print(f"Helix hopb=1 : median decode step {off * 1e3:.2f} ms ({len(times['hopb1'])} steps)")
    print(f"ratio hopb={a.hopb} / hopb=1 = {ratio:.3f} (< 1: the overlap hides part of the all-to-all)")
    print(f"machine: {cores} cores for {NPROC} ranks; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")
    row = {
        "benchmark": "helix_overlap", "model": "examples/llama.py", "model_args": llama_model_args(a),
        "ranks": NPROC, "mesh": a.mesh, "backend": "gloo", "dtype": "float32", "omp_threads": 1,
        "workload": "decode", "batch": a.batch, "context": a.context, "steps": a.steps,
        "warmup": a.warmup, "rounds": a.rounds, "hopb": a.hopb,
        "hopb_median_s": round(on, 6), "no_hopb_median_s": round(off, 6), "ratio": round(ratio, 4),
        "per_round_median_s": {n: [round(x, 6) for x in v] for n, v in per_round.items()},
        "cores": cores, "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
