"""Context-parallel training. Run: .venv/bin/python benchmarks/cp_train.py [--tokens 1024]

1. The ring backward's step against the forward's step, measured in one process: the
   generated program's `attend_block` (one ring step's attention over a K/V block) and
   `attend_block_backward` (that block's share of dq, dk, dv, recomputed from the saved
   log-sum-exp) at Llama-3-8B heads per rank under tp4 (8 query, 2 KV heads, d 128), a
   query chunk and a key block of --tokens each, float32 on this CPU. The cost model prices
   the backward step at BACKWARD_FACTOR × the forward step; this prints the measured ratio
   beside it (recomputing from the log-sum-exp makes 5 matmuls where the forward has 2).
2. The planner's choice for Llama-3-8B training, one sequence of 32K / 128K / 512K tokens, on
   16 and 64 H100s: mesh, attention strategy, step time, and the CP ring's send time per
   step, forward and backward (sent, not all exposed: the ring steps' attention hides most),
   as a share of the step.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ir.errors import InfeasiblePlanError  # noqa: E402
from ir.workload import Workload  # noqa: E402
from passes.parallelize.training import BACKWARD_FACTOR  # noqa: E402
from planner.api import make_plan  # noqa: E402
from planner.frontend import load_graph  # noqa: E402
from planner.model_source import resolve_source  # noqa: E402
from planner.verify_runner import write_run_plan  # noqa: E402

LLAMA = str(Path(__file__).resolve().parent.parent / "examples" / "llama.py")


def runtime_module():
    """The runtime of a generated CP training program (tiny model, cp2)."""
    run = make_plan(
        load_graph(resolve_source(LLAMA, {})), hardware="h100-sxm", gpus=2,
        workload=Workload(kind="train", batch=2, seq=8, context=0),
        force=["layers.*.attention=cp_pass_kv(cp=2)"],
    )
    path = write_run_plan(run.graph, run.plan, tempfile.mkdtemp())
    spec = importlib.util.spec_from_file_location("cp_train_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_of(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def step_ratio(tokens: int) -> None:
    import torch

    rt = runtime_module()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, tokens, 128, generator=g)
    k, v = (torch.randn(1, 2, tokens, 128, generator=g) for _ in range(2))
    valid = torch.ones(1, 1, tokens, tokens, dtype=torch.bool).tril()
    scale = 128**-0.5
    out, lse = rt.attend_block(q, k, v, valid, scale)
    d_out = torch.randn(out.shape, generator=g)
    delta = (d_out * out).sum(-1, keepdim=True)
    with torch.no_grad():
        forward = best_of(lambda: rt.attend_block(q, k, v, valid, scale))
        backward = best_of(lambda: rt.attend_block_backward(q, k, v, valid, scale, d_out, delta, lse))
    print(f"ring step, {tokens} queries × {tokens} keys, 8 q / 2 kv heads, d 128 (float32, CPU):")
    print(f"  forward {forward * 1e3:.1f} ms, backward {backward * 1e3:.1f} ms: "
          f"ratio {backward / forward:.2f} (cost model: {BACKWARD_FACTOR:.1f})")


def planner_table() -> None:
    loaded = load_graph(resolve_source(LLAMA, {"preset": "llama3-8b"}))
    print("\nLlama-3-8B training, batch 1, h100-sxm (planner's choice):")
    print(f"{'tokens':>7} {'GPUs':>5} {'mesh':>14} {'attention':>11} {'step s':>8} "
          f"{'ring fwd':>9} {'ring bwd':>9}")
    for seq in (32 * 1024, 128 * 1024, 512 * 1024):
        for gpus in (16, 64):
            try:
                run = make_plan(loaded, hardware="h100-sxm", gpus=gpus,
                                workload=Workload(kind="train", batch=1, seq=seq, context=0))
            except InfeasiblePlanError:
                print(f"{seq // 1024:>6}K {gpus:>5} {'does not fit':>14}")
                continue
            plan = run.plan
            attention = [b for b in plan.blocks if b.kind == "attention"]
            step = plan.predicted["seconds"]
            fwd = sum(b.comm_s.get("send_recv:cp", 0.0) for b in attention)
            bwd = sum(b.comm_s.get("send_recv:cp_backward", 0.0) for b in attention)
            mesh = "×".join(f"{a}{n}" for a, n in plan.mesh.items() if n > 1) or "1"
            print(f"{seq // 1024:>6}K {gpus:>5} {mesh:>14} {attention[0].strategy:>11} {step:>8.3f} "
                  f"{fwd / step:>9.1%} {bwd / step:>9.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    step_ratio(args.tokens)
    planner_table()


if __name__ == "__main__":
    main()
