"""`helixplan plan`: choose a strategy per block and write plan.json, report.md."""

from __future__ import annotations

import argparse
import sys

from ir.errors import InputError
from ir.workload import Workload
from planner.commands.common import add_model_arguments, parse_tokens
from planner.model_source import parse_model_args, resolve_source

NAME = "plan"
HELP = "Plan a model for N GPUs: per-block strategies by integer program; writes plan.json."


def add_plan_arguments(p: argparse.ArgumentParser, *, gpus_required: bool = True) -> None:
    p.add_argument("--hardware", default="h100-sxm", help="preset name or spec/profile file")
    p.add_argument("--gpus", type=int, required=gpus_required, help="number of GPUs")
    p.add_argument("--workload", choices=("decode", "prefill", "train"), default="decode")
    p.add_argument("--batch", type=int, default=None, help="batch size (sequences)")
    p.add_argument("--seq", type=parse_tokens, default=None, help="new tokens per sequence T")
    p.add_argument("--context", type=parse_tokens, default=None, help="cached tokens L (128k ok)")
    p.add_argument("--ttl-slo", type=float, default=None, metavar="MS", help="decode SLO (ms)")
    p.add_argument("--ttft-slo", type=float, default=None, metavar="MS", help="prefill SLO (ms)")
    p.add_argument("--weight-dtype", default="bf16")
    p.add_argument("--kv-dtype", default="bf16")
    p.add_argument("--act-dtype", default="bf16")
    p.add_argument("--optimizer", default="adamw", choices=("sgd", "adamw"))
    p.add_argument(
        "--zero", default="0,1,2,3", metavar="LEVELS",
        help="training: dp sharding levels the planner may pick per block (0 replicated, "
        "1 optimizer state, 2 + gradients, 3 + parameters), comma-separated",
    )
    p.add_argument(
        "--recompute", default="auto", choices=("auto", "none", "full"),
        help="training: activation recomputation (auto: the planner decides per block)",
    )
    p.add_argument(
        "--force", action="append", default=[], metavar="BLOCK_GLOB=STRATEGY",
        help="pin matching blocks, e.g. 'layers.*.attention=tp(tp=4)' (repeatable)",
    )
    p.add_argument(
        "--strategies", default=None, metavar="LIST",
        help="strategies the planner may use, comma-separated (default: the verified set); "
        "'+helix' adds to the default set",
    )
    p.add_argument("--per-layer", action="store_true", help="let identical layers differ")
    p.add_argument(
        "--expert-skew", type=float, default=1.2,
        help="MoE load imbalance: tokens on the busiest expert rank over the mean (default 1.2)",
    )
    p.add_argument(
        "--allow-unverified", action="store_true",
        help="also plan with strategies whose generated program is not yet verified "
        "(no run_plan.py is written for such a plan)",
    )
    p.add_argument("--cuda-graphs", action="store_true", help="price kernels replayed in a CUDA graph")
    p.add_argument("--time-limit", type=float, default=60.0, help="solver limit per mesh (s)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_plan_arguments(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--json", action="store_true", help="print plan.json to stdout")
    p.add_argument("--no-program", action="store_true",
                   help="write plan.json and report.md only, not run_plan.py (skips lowering "
                   "and code generation, the slowest part of planning a cached deep model)")


DEFAULTS = {
    "decode": {"batch": 8, "seq": 1, "context": 4096},
    "prefill": {"batch": 1, "seq": 4096, "context": 0},
    "train": {"batch": 8, "seq": 4096, "context": 0},
}


def workload_from_args(args: argparse.Namespace) -> Workload:
    d = DEFAULTS[args.workload]
    batch = args.batch if args.batch is not None else d["batch"]
    seq = args.seq if args.seq is not None else d["seq"]
    context = args.context if args.context is not None else d["context"]
    if args.workload == "train" and context:
        raise InputError("--context applies to decode and prefill; training has no KV cache")
    for name, value in (("--ttl-slo", args.ttl_slo), ("--ttft-slo", args.ttft_slo)):
        if value is not None and value <= 0:
            raise InputError(f"{name} must be a positive number of milliseconds, got {value}")
    return Workload(
        kind=args.workload, batch=batch, seq=seq, context=context,
        weight_dtype=args.weight_dtype, kv_dtype=args.kv_dtype, act_dtype=args.act_dtype,
        optimizer=args.optimizer,
        zero_levels=_zero_levels(args.zero),
        recompute=args.recompute,
        ttl_slo_s=args.ttl_slo / 1e3 if args.ttl_slo else None,
        ttft_slo_s=args.ttft_slo / 1e3 if args.ttft_slo else None,
        expert_skew=args.expert_skew,
    )


def _zero_levels(text: str) -> tuple[int, ...]:
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    if not parts or not all(t.isdigit() for t in parts):
        raise InputError(
            f"--zero {text!r} is not a comma-separated list of levels; e.g. --zero 0,1,2,3 "
            "or --zero 3"
        )
    return tuple(int(t) for t in parts)


def strategies_from_args(text: str | None) -> frozenset[str] | None:
    from passes.parallelize.strategies import BY_NAME, DEFAULT_STRATEGIES

    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    chosen = set(DEFAULT_STRATEGIES) if all(t.startswith("+") for t in items) else set()
    for item in items:
        name = item.lstrip("+")
        if name not in BY_NAME:
            raise InputError(
                f"--strategies names {name!r}; known strategies: {', '.join(BY_NAME)}"
            )
        chosen.add(name)
    chosen.add("replicate")
    return frozenset(chosen)


def run(args: argparse.Namespace) -> int:
    from planner.api import make_plan, make_plan_max_batch, write_outputs
    from planner.report import fmt_s, plan_table

    workload = workload_from_args(args)
    source = resolve_source(args.model, parse_model_args(args.model_arg))
    options = dict(
        hardware=args.hardware, gpus=args.gpus, workload=workload, force=args.force,
        per_layer=args.per_layer, time_limit_s=args.time_limit, cuda_graphs=args.cuda_graphs,
        strategies=strategies_from_args(args.strategies),
        verified_only=not args.allow_unverified,
    )
    has_slo = args.ttl_slo is not None or args.ttft_slo is not None
    if has_slo and args.batch is None:
        run_ = make_plan_max_batch(source, **options)
    else:
        run_ = make_plan(source, **options)
    paths = write_outputs(run_, args.out, unverified_ok=args.allow_unverified,
                          write_program=not args.no_program)
    if args.json:
        sys.stdout.write(paths["plan"].read_text())  # as written: serialized once
        return 0
    from rich.console import Console

    console = Console(width=max(Console().width, 140))
    console.print(plan_table(run_.plan))
    solver = run_.plan.solver
    if solver["status"] != "OPTIMAL":
        console.print(
            f"solver: the time limit ({args.time_limit:g} s per mesh) stopped the search before "
            f"it proved optimality; this plan is within {solver['gap']:.1%} of the best possible "
            f"(proven lower bound {fmt_s(solver['bound_s'])}). Raise --time-limit for a proof."
        )
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
