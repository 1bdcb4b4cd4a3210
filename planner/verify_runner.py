"""Run a generated `run_plan.py` and judge it: under torchrun (gloo), or in one process
with one thread per rank (torch's threaded process group, for fast tests).

`verify_program` returns a `VerifyReport`: the program's own comparison with the
single-process model (rank 0's `ok`, `max_abs_err`, `ref_scale`) and each rank's
`param_bytes`/`kv_bytes` held against the plan's memory breakdown (within 10%, after
scaling the plan's bytes to the run's dtype, batch and cached tokens).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ir.errors import PlannerError
from ir.graph import Graph
from ir.plan import Plan
from ir.workload import DTYPE_BYTES

MEMORY_TOLERANCE = 0.10


class VerifyError(PlannerError):
    """The generated program could not be run (not: it ran and was inexact)."""


def write_run_plan(graph: Graph, plan: Plan, out_dir: str | Path) -> Path:
    """Lower `plan` over `graph` and write `out_dir/run_plan.py`."""
    from codegen import generate
    from passes.lower import lower
    from planner.frontend import cache_dir

    program = lower(graph, plan)
    source = graph.meta.get("source") or {}
    model_file = None
    if source.get("kind") == "hf":
        model_file = str(copy_hf_model_file(source["path"], out_dir))
    cache = cache_dir()
    templates = cache / "templates" if cache is not None else None
    return generate(program, plan, out_dir, model_file=model_file, bytecode_dir=templates)


def copy_hf_model_file(config: str | Path, out_dir: str | Path) -> Path:
    """An hf: model's model file for the program: planner/hf_model.py as `hf_model.py`
    with the config beside it as `config.json`."""
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if Path(config).resolve() != (out / "config.json").resolve():
        shutil.copyfile(config, out / "config.json")
    target = out / "hf_model.py"
    shutil.copyfile(Path(__file__).with_name("hf_model.py"), target)
    return target


def program_args(
    *, workload: str, batch: int, seq: int, context: int, steps: int, backend: str = "gloo",
    checkpoint: str | None = None,
) -> list[str]:
    argv = ["--checkpoint", str(checkpoint)] if checkpoint else []
    argv += [
        "--verify",
        "--backend", backend,
        "--workload", workload,
        "--batch", str(batch),
        "--seq", str(seq),
        "--context", str(context),
        "--steps", str(steps),
    ]
    if workload == "train":
        # exact arithmetic isolates the parallel program's error (see run_train's docstring)
        argv += ["--dtype", "float64"]
    return argv


def run_torchrun(program: Path, nproc: int, argv: list[str], *, timeout_s: float = 600) -> list[dict]:
    """Launch `torchrun --nproc-per-node nproc program argv` on CPU and collect each rank's
    JSON line."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc),
        "--master-port", str(_free_port()),
        str(program), *argv,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise VerifyError(f"torchrun did not finish within {timeout_s:.0f}s: {' '.join(cmd)}") from exc
    results = parse_results(proc.stdout)
    if proc.returncode not in (0, 1) or len(results) != nproc:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise VerifyError(
            f"torchrun exited with code {proc.returncode} and {len(results)} of {nproc} rank "
            f"results. Command: {' '.join(cmd)}. Last output:\n{tail}"
        )
    return results


def parse_results(text: str) -> list[dict]:
    """Each rank's JSON object, wherever it sits in the merged output of the ranks (lines
    may carry a `[rankN]:` prefix or run into each other)."""
    decoder = json.JSONDecoder()
    out = {}
    start = text.find('{"rank"')
    while start >= 0:
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            end = start + 1
        else:
            if isinstance(obj, dict) and "step_seconds" in obj:
                out[obj["rank"]] = obj
        start = text.find('{"rank"', end)
    return [out[r] for r in sorted(out)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_THREADED_LOCK = threading.Lock()


def run_threaded(program: Path, nproc: int, argv: list[str]) -> list[dict]:
    """Run every rank of `program` as a thread of this process over torch's threaded
    process group (collectives complete synchronously; numerics are the real ones)."""
    spec = importlib.util.spec_from_file_location(f"helixplan_run_plan_{abs(hash(str(program)))}", program)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(argv)
    return run_ranks_threaded(nproc, lambda rank: module.run(args, print_result=False))


def run_ranks_threaded(nproc: int, fn: Any) -> list[Any]:
    """`fn(rank)` on `nproc` threads, each inside its rank of a threaded process group
    (initialized before and destroyed after `fn`); the results in rank order."""
    import torch.distributed as dist
    from torch._C._distributed_c10d import _set_thread_isolation_mode
    from torch.testing._internal.distributed import multi_threaded_pg as mtpg

    results: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}
    with _THREADED_LOCK:
        _set_thread_isolation_mode(True)
        mtpg._install_threaded_pg()
        mtpg.ProcessLocalGroup.reset()
        store = dist.HashStore()

        def worker(rank: int) -> None:
            try:
                dist.init_process_group("threaded", rank=rank, world_size=nproc, store=store)
                results[rank] = fn(rank)
            except BaseException as exc:  # re-raised below, with the rank
                errors[rank] = exc
                mtpg.ProcessLocalGroup.exception_handle(exc)
            finally:
                if dist.is_initialized():
                    dist.destroy_process_group()

        threads = [threading.Thread(target=worker, args=(r,)) for r in range(nproc)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            mtpg._uninstall_threaded_pg()
            _set_thread_isolation_mode(False)
            mtpg.ProcessLocalGroup.reset()
    if errors:
        rank = min(errors)
        raise errors[rank]
    return [results[r] for r in range(nproc)]


@dataclass
class VerifyReport:
    ok: bool
    max_abs_err: float
    ref_scale: float
    nproc: int
    memory_ok: bool
    problems: list[str] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "max_abs_err": self.max_abs_err,
            "ref_scale": self.ref_scale,
            "nproc": self.nproc,
        }

    @property
    def passed(self) -> bool:
        return self.ok and self.memory_ok


def expected_memory(plan: Plan, result: dict) -> dict[str, float]:
    """The plan's per-GPU weight and KV bytes, scaled to what this run holds: the run's
    element sizes, and for the KV cache its batch and cached tokens."""
    breakdown = (plan.memory or {}).get("breakdown") or {}
    workload = plan.workload or {}
    out: dict[str, float] = {}
    if "weights" in breakdown:
        plan_elem = DTYPE_BYTES.get(str(workload.get("weight_dtype", "bf16")), 2.0)
        out["param_bytes"] = breakdown["weights"] / plan_elem * result.get("param_dtype_bytes", 4)
    if "kv_cache" in breakdown:
        plan_elem = DTYPE_BYTES.get(str(workload.get("kv_dtype", "bf16")), 2.0)
        tokens = int(workload.get("context", 0)) + int(workload.get("seq", 0))
        cp = int(plan.mesh.get("cp", 1))
        if cp > 1:  # the run reports its own share under context parallelism (balanced, padded)
            seq = int(workload.get("seq", 0))
            tokens = -(-int(workload.get("context", 0)) // cp) + -(-seq // (2 * cp)) * 2
        if workload.get("kind") == "train":
            tokens = 0
        plan_batch = int(workload.get("batch", 1))
        if tokens > 0 and plan_batch > 0:
            # Helix splits the cache along the sequence over kvp ranks and the plan counts the
            # fullest rank's tokens (round-robin blocks); scaling per rank (not per token)
            # keeps that rounding out of the comparison when tokens do not divide by kvp.
            kvp = sequence_split(plan)
            plan_rank_tokens = planned_rank_tokens(plan, tokens)
            run_rank_tokens = -(-int(result.get("kv_tokens", 0)) // kvp)
            per_token = breakdown["kv_cache"] / plan_elem / (plan_rank_tokens * plan_batch)
            out["kv_bytes"] = (
                per_token * run_rank_tokens * result.get("batch", 0) * result.get("kv_dtype_bytes", 4)
            )
        elif breakdown["kv_cache"] == 0:
            out["kv_bytes"] = 0.0
    return out


def planned_rank_tokens(plan: Plan, tokens: int) -> int:
    """KV tokens per rank the planner priced for a sequence of `tokens`: all of them, or under
    Helix the fullest kvp rank's share of round-robin blocks of `append_block` tokens."""
    kvp = sequence_split(plan)
    if kvp == 1:
        return tokens
    from passes.parallelize.strategies.helix import DEFAULT_APPEND_BLOCK, kv_tokens_per_rank

    block = next(b for b in plan.blocks if b.kind == "attention")
    return kv_tokens_per_rank(tokens, kvp, int(block.extras.get("append_block", DEFAULT_APPEND_BLOCK)))


def sequence_split(plan: Plan) -> int:
    """kvp when every attention block keeps its cache split along the sequence (Helix), else
    1 (a mix of split and unsplit caches is scaled per token, as before)."""
    attention = [b for b in plan.blocks if b.kind == "attention"]
    if attention and all(b.strategy == "helix" for b in attention):
        return int(plan.mesh.get("kvp", 1))
    return 1


def judge(plan: Plan, results: list[dict], nproc: int) -> VerifyReport:
    problems: list[str] = []
    rank0 = next((r for r in results if r.get("rank") == 0), {})
    if "ok" not in rank0:
        problems.append("rank 0 reported no comparison (was --verify passed?)")
    ok = bool(rank0.get("ok", False))
    memory_ok = True
    for r in results:
        for key, want in expected_memory(plan, r).items():
            got = float(r.get(key, 0))
            if want == 0 and got == 0:
                continue
            if want == 0 or abs(got - want) > MEMORY_TOLERANCE * want:
                memory_ok = False
                problems.append(
                    f"rank {r.get('rank')}: {key} {got:.0f} is not within 10% of the plan's "
                    f"{want:.0f} (scaled to this run)"
                )
    return VerifyReport(
        ok=ok,
        max_abs_err=float(rank0.get("max_abs_err", float("nan"))),
        ref_scale=float(rank0.get("ref_scale", float("nan"))),
        nproc=nproc,
        memory_ok=memory_ok,
        problems=problems,
        results=results,
    )


def verify_program(
    program: Path,
    plan: Plan,
    *,
    nproc: int,
    workload: str,
    batch: int,
    seq: int,
    context: int,
    steps: int,
    threaded: bool = False,
    timeout_s: float = 600,
    checkpoint: str | None = None,
) -> VerifyReport:
    if nproc != plan.world_size:
        raise VerifyError(
            f"the plan runs on {plan.world_size} ranks (mesh {plan.mesh}); --nproc is {nproc}. "
            f"Pass --nproc {plan.world_size} or re-plan for {nproc} GPUs"
        )
    if checkpoint:
        from planner.checkpoint import check_checkpoint, program_weights

        check_checkpoint(checkpoint, program_weights(program))
    argv = program_args(workload=workload, batch=batch, seq=seq, context=context, steps=steps,
                        checkpoint=checkpoint)
    results = run_threaded(program, nproc, argv) if threaded else run_torchrun(program, nproc, argv, timeout_s=timeout_s)
    return judge(plan, results, nproc)
