"""A 1,000-point decode sweep of DeepSeek-V3: 4 hardware presets x 5 contexts x 5 GPU counts
x 10 batch sizes, each point planned without and with Helix (2,000 searches), as the
`helixplan sweep` CLI in a fresh process with the trace cached. Target: under 60 s on a
2-core machine.

Also, in this process on a sample of the same points: CPU time per point of the sweep's
path (compact group-level program, lower-bound pruning, prices and best time shared between
the two searches of a point) against the plain per-block search of every mesh, which the
sweep used before; both must find plans of the same time.

`python benchmarks/sweep_time.py [--workers N] [--sample K]`"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, load_note, run_cli_timed

MODEL = ["examples/deepseek.py", "--model-arg", "preset=deepseek-v3"]
HARDWARE = ["h100-sxm", "h200", "b200", "gb200-nvl72"]
CONTEXTS = [4096, 32768, 131072, 524288, 1 << 20]
GPUS = [16, 32, 64, 128, 256]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def _sample_ratio(sample: int, cache: str) -> dict:
    import os

    os.environ["HELIXPLAN_CACHE_DIR"] = cache
    sys.path.insert(0, str(ROOT))
    from cost_models import load_hardware
    from ir.errors import InfeasiblePlanError
    from ir.workload import Workload
    from passes.parallelize.search import search
    from passes.parallelize.strategies import DEFAULT_STRATEGIES
    from planner.frontend import load_graph
    from planner.model_source import resolve_source
    from planner.sweep import design_points, plan_point

    loaded = load_graph(resolve_source(MODEL[0], {"preset": "deepseek-v3"}))
    grid = design_points([load_hardware(h) for h in HARDWARE], CONTEXTS, GPUS, BATCHES)
    points = random.Random(0).sample(grid, sample)
    base = Workload(kind="decode", batch=1, seq=1, context=4096)

    t0 = time.process_time()
    fast = [plan_point(loaded.graph, base, DEFAULT_STRATEGIES, p) for p in points]
    fast_s = time.process_time() - t0

    t0 = time.process_time()
    plain = []
    for p in points:
        wl = Workload(kind="decode", batch=p.batch, seq=1, context=p.context)
        for helix in (False, True):
            allowed = DEFAULT_STRATEGIES if helix else DEFAULT_STRATEGIES - {"helix"}
            try:
                r = search(loaded.graph, wl, p.hardware, p.gpus, strategies=allowed, top_k=1)
                plain.append(r.best.solution.objective_s)
            except InfeasiblePlanError:
                plain.append(None)
    plain_s = time.process_time() - t0

    got = []
    for pts, _ in fast:
        by_helix = {q.helix: q.ttl_seconds for q in pts}
        got += [by_helix.get(False), by_helix.get(True)]
    same = all((a is None and b is None) or (a is not None and b is not None
               and abs(a / b - 1) < 1e-9) for a, b in zip(got, plain, strict=True))
    return {"sample_points": sample, "sweep_cpu_s_per_point": round(fast_s / sample, 4),
            "plain_cpu_s_per_point": round(plain_s / sample, 4),
            "speedup": round(plain_s / fast_s, 2), "same_plan_times": same}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    p.add_argument("--sample", type=int, default=40, help="points for the per-point ratio")
    a = p.parse_args()
    print(load_note(), flush=True)
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        trace_s, _, _ = run_cli_timed(["inspect", *MODEL, "--json"], cache_dir=cache)
        args = ["sweep", *MODEL, "--hardware", ",".join(HARDWARE),
                "--context", ",".join(map(str, CONTEXTS)), "--gpus", ",".join(map(str, GPUS)),
                "--batches", ",".join(map(str, BATCHES)), "--out", out]
        if a.workers:
            args += ["--workers", str(a.workers)]
        wall, cpu, _ = run_cli_timed(args, cache_dir=cache)
        data = json.loads((Path(out) / "pareto.json").read_text())
        row = {"design_points": len(HARDWARE) * len(CONTEXTS) * len(GPUS) * len(BATCHES),
               "plans": len(data["points"]), "no_plan": len(data["skipped"]),
               "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
               "workers": a.workers or "default", "trace_s": round(trace_s, 2)}
        print(f"{row['design_points']} design points (x2 with/without Helix): {row['plans']} plans, "
              f"{row['no_plan']} without a feasible plan; wall {wall:.1f} s, CPU {cpu:.1f} s",
              flush=True)
        if a.sample:
            ratio = _sample_ratio(a.sample, cache)
            row.update(ratio)
            print(f"per point (in-process, CPU): sweep path {ratio['sweep_cpu_s_per_point']:.4f} s, "
                  f"plain per-block search {ratio['plain_cpu_s_per_point']:.4f} s, "
                  f"x{ratio['speedup']}; same plan times: {ratio['same_plan_times']}", flush=True)
    print(load_note())
    print(json.dumps(row))


if __name__ == "__main__":
    main()
