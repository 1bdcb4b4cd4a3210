"""`helixplan verify`: run a plan's generated program on CPU and check it is exact.

Given a plan directory (plan.json, and run_plan.py — written from the plan when missing) or a
model file (planned first, for --nproc GPUs), launches the program under torchrun with gloo
(`--verify`: rank 0 compares every step's logits with the single-process model; a training
plan runs optimizer steps and compares the loss, every gradient and every updated weight,
in float64 so that AdamW's division by tiny second moments does not blow rounding noise up
into the comparison) and prints
`{"ok", "max_abs_err", "ref_scale", "nproc"}`. Exit 0 only when the program is exact and
each rank's weight and KV-cache bytes are within 10% of the plan's memory breakdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from ir.errors import InputError
from ir.plan import Plan
from ir.workload import Workload
from planner.commands.common import parse_tokens

NAME = "verify"
HELP = "Run a plan's program under torchrun (CPU, gloo) and compare it with the model."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="MODEL|DIR", help="plan directory (plan.json) or model file")
    p.add_argument("--nproc", type=int, required=True, help="ranks to launch (the plan's GPU count)")
    p.add_argument("--steps", type=int, default=3,
                   help="decode steps / training optimizer steps to compare (default 3)")
    p.add_argument("--workload", choices=("decode", "prefill", "train"), default=None,
                   help="what to run (default: the plan's workload)")
    p.add_argument("--batch", type=int, default=None, help="sequences (default: one per rank)")
    p.add_argument("--seq", type=parse_tokens, default=None, help="new tokens (prefill)")
    p.add_argument("--context", type=parse_tokens, default=None,
                   help="prompt (decode) or cached prefix (prefill) tokens")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="size argument for build_model when planning a model file")
    p.add_argument("--hardware", default="h100-sxm", help="hardware preset when planning a model")
    p.add_argument("--force", action="append", default=[], metavar="BLOCK_GLOB=STRATEGY",
                   help="pin strategies when planning a model (repeatable)")
    p.add_argument("--out", default=None, help="directory for plan.json and run_plan.py")
    p.add_argument("--in-process", action="store_true",
                   help="run ranks as threads of this process (threaded process group) instead of torchrun")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="read the weights from DIR/*.safetensors (each rank only its slices); "
                        "shapes are checked against the model before launching")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before torchrun is stopped")


def _sizes(args: argparse.Namespace, plan: Plan, kind: str, *, from_plan: bool) -> tuple[int, int, int]:
    """Run sizes: as given; else the plan's own workload when verify planned it, else small
    ones that every split divides (a plan made for 128k tokens is checked on a short run)."""
    tp = int(plan.mesh.get("tp", 1))
    w = plan.workload if from_plan else {}
    batch = args.batch if args.batch is not None else w.get("batch", max(2, plan.world_size))
    seq = args.seq if args.seq is not None else w.get("seq", 1 if kind == "decode" else 2 * tp)
    default_context = 8 if kind == "decode" else 0
    context = args.context if args.context is not None else w.get("context", default_context)
    for name, value in (("--batch", batch), ("--seq", seq)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if context < 0:
        raise InputError(f"--context must be >= 0, got {context}")
    return batch, seq, context


def _plan_model(args: argparse.Namespace, out: Path) -> tuple[Plan, Path]:
    from planner.api import make_plan, write_outputs
    from planner.model_source import parse_model_args, resolve_source
    from planner.verify_runner import write_run_plan

    source = resolve_source(args.target, parse_model_args(args.model_arg))
    kind = args.workload or "decode"
    batch = args.batch if args.batch is not None else max(2, args.nproc)
    seq = args.seq if args.seq is not None else 1 if kind == "decode" else 8
    context = args.context if args.context is not None else (16 if kind == "decode" else 0)
    workload = Workload(kind=kind, batch=batch, seq=seq, context=context)
    run = make_plan(source, hardware=args.hardware, gpus=args.nproc, workload=workload, force=args.force)
    write_outputs(run, out)
    return run.plan, write_run_plan(run.graph, run.plan, out)


def _plan_dir(target: Path) -> tuple[Plan, Path]:
    plan = Plan.load(target)
    directory = target if target.is_dir() else target.parent
    program = directory / "run_plan.py"
    if not program.is_file():
        from planner.frontend import load_graph
        from planner.model_source import resolve_source
        from planner.verify_runner import write_run_plan

        model = plan.model or {}
        if not model.get("path"):
            raise InputError(f"{directory} has no run_plan.py and plan.json names no model to rebuild it from")
        spec = model["path"] if model.get("kind") != "hf" else f"hf:{model['path']}"
        source = resolve_source(spec, dict(model.get("model_args") or {}))
        program = write_run_plan(load_graph(source).graph, plan, directory)
    return plan, program


def run(args: argparse.Namespace) -> int:
    from planner.verify_runner import verify_program

    if args.nproc < 1:
        raise InputError(f"--nproc must be >= 1, got {args.nproc}")
    target = Path(args.target)
    planned_here = not (target.is_dir() or target.name == "plan.json")
    if planned_here:
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="helixplan-verify-"))
        plan, program = _plan_model(args, out)
    else:
        plan, program = _plan_dir(target)
    kind = args.workload or plan.workload.get("kind", "prefill")
    batch, seq, context = _sizes(args, plan, kind, from_plan=planned_here)
    report = verify_program(
        program,
        plan,
        nproc=args.nproc,
        workload=kind,
        batch=batch,
        seq=seq,
        context=context,
        steps=args.steps,
        threaded=args.in_process,
        timeout_s=args.timeout,
        checkpoint=args.checkpoint,
    )
    print(json.dumps(report.summary()))
    for problem in report.problems:
        print(f"verify: {problem}", file=sys.stderr)
    return 0 if report.passed else 1
