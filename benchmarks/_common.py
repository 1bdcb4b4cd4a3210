"""Shared helpers for the benchmarks: run the CLI as a fresh process and time it."""

from __future__ import annotations

import os
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
