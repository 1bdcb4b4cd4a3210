"""Shared helpers for the benchmarks: run the CLI as a fresh process and time it."""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], *, cache_dir: str, allow_exit_2: bool = False) -> tuple[float, str]:
    """Wall time and stdout of `helixplan ARGS` in a fresh process. With `allow_exit_2`, a
    user-facing refusal (e.g. an infeasible plan) returns its stderr instead of failing."""
    env = dict(os.environ, HELIXPLAN_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "planner", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - t0
    if r.returncode == 2 and allow_exit_2:
        return elapsed, "ERROR " + r.stderr
    if r.returncode != 0:
        raise SystemExit(f"helixplan {' '.join(args)} failed:\n{r.stderr}")
    return elapsed, r.stdout


def run_cli_timed(
    args: list[str], *, cache_dir: str, allow_exit_2: bool = False
) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the child) and stdout of `helixplan ARGS`
    in a fresh process. CPU time is what the command costs when the machine is shared; wall
    time is what a user waits. Bytecode is cached as in an ordinary install (the sandbox's
    PYTHONDONTWRITEBYTECODE would recompile helixplan's modules in every process)."""
    env = dict(os.environ, HELIXPLAN_CACHE_DIR=cache_dir)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "planner", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r.returncode == 2 and allow_exit_2:
        return elapsed, cpu, "ERROR " + r.stderr
    if r.returncode != 0:
        raise SystemExit(f"helixplan {' '.join(args)} failed:\n{r.stderr}")
    return elapsed, cpu, r.stdout


def load_note() -> str:
    """The 1-minute load average and CPU count: wall times on a shared machine need it."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def add_llama_size_arguments(p: argparse.ArgumentParser, *, layers: int, kv_heads_help: str) -> None:
    """The examples/llama.py size options both decode benchmarks expose."""
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4, help=kv_heads_help)
    p.add_argument("--ffn", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=4096)


def llama_model_args(a: argparse.Namespace) -> list[str]:
    """`--model-arg` values for examples/llama.py from those options."""
    return [f"hidden={a.hidden}", f"layers={a.layers}", f"heads={a.heads}",
            f"kv_heads={a.kv_heads}", f"ffn={a.ffn}", f"vocab={a.vocab}"]


def plan_llama_decode(a: argparse.Namespace, nproc: int, forces: list[str], out: Path) -> dict:
    """`helixplan plan examples/llama.py` for a decode step with the benchmark's sizes, batch and
    context and the given `--force` rules; the plan as `--json` prints it."""
    import json

    cmd = [sys.executable, "-m", "planner", "plan", str(ROOT / "examples" / "llama.py")]
    for m in llama_model_args(a):
        cmd += ["--model-arg", m]
    cmd += ["--gpus", str(nproc), "--workload", "decode", "--batch", str(a.batch), "--context", str(a.context)]
    for rule in forces:
        cmd += ["--force", rule]
    cmd += ["--out", str(out), "--json"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"helixplan plan failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout)


def step_times(results: list[dict], warmup: int) -> list[float]:
    """Per step, the slowest rank (the ranks meet in every collective); warm-up dropped."""
    per_rank = [r["step_seconds"] for r in results]
    n = min(len(s) for s in per_rank)
    return [max(s[i] for s in per_rank) for i in range(warmup, n)]
