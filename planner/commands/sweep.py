"""`helixplan sweep`: best plans over hardware, contexts, GPU counts and batch sizes, with
and without Helix, solved in parallel worker processes."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from ir.errors import InputError
from ir.workload import Workload
from planner.commands.common import add_model_arguments, parse_tokens
from planner.model_source import parse_model_args, resolve_source

NAME = "sweep"
HELP = (
    "Sweep batch sizes, GPU counts, contexts and hardware; write the Pareto frontier with and "
    "without Helix."
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(parse_tokens(t)) for t in text.split(",") if t.strip()]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--hardware", default="h100-sxm",
                   help="preset names or spec files, comma-separated, e.g. h100-sxm,b200")
    p.add_argument("--gpus", type=_int_list, required=True, help="GPU counts, e.g. 8,16,32,64")
    p.add_argument("--workload", choices=("decode",), default="decode")
    p.add_argument("--context", "--contexts", dest="context", type=_int_list, required=True,
                   help="KV lengths, comma-separated, e.g. 128k,1M")
    p.add_argument("--batches", type=_int_list, required=True, help="batch sizes, e.g. 1,8,64")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU; 1 plans in this process)")
    p.add_argument("--weight-dtype", default="bf16")
    p.add_argument("--kv-dtype", default="bf16")
    p.add_argument("--act-dtype", default="bf16")
    p.add_argument("--strategies", default=None, help="as for plan; helix is added for the Helix frontier")
    p.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> int:
    from cost_models import load_hardware
    from passes.parallelize.strategies import DEFAULT_STRATEGIES
    from planner.commands.plan import strategies_from_args
    from planner.frontend import load_graph
    from planner.sweep import default_workers, design_points, pareto_front, sweep, write_sweep

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    names = [h.strip() for h in args.hardware.split(",") if h.strip()]
    if not names:
        raise InputError(f"--hardware {args.hardware!r} names no hardware; e.g. h100-sxm,b200")
    source = resolve_source(args.model, parse_model_args(args.model_arg))
    hardware = [load_hardware(h) for h in names]
    workload = Workload(kind="decode", batch=1, seq=1, context=args.context[0],
                        weight_dtype=args.weight_dtype, kv_dtype=args.kv_dtype,
                        act_dtype=args.act_dtype)
    loaded = load_graph(source)
    strategies = strategies_from_args(args.strategies) or DEFAULT_STRATEGIES
    grid = design_points(hardware, args.context, args.gpus, args.batches)
    workers = args.workers or default_workers()
    with Progress(transient=True) as bar:
        task = bar.add_task(f"planning {len(grid)} points x 2", total=len(grid))
        points, skipped = sweep(
            loaded, grid, workload=workload, strategies=strategies, workers=workers,
            progress=lambda n: bar.advance(task, n),
        )
    contexts = ",".join(str(c) for c in args.context)
    model_args = " ".join(f"{k}={v}" for k, v in source.model_args.items())
    title = f"{source.display} {model_args}, decode L={contexts}, {','.join(h.name for h in hardware)}"
    paths = write_sweep(Path(args.out), points, skipped, title)
    console = Console(width=max(Console().width, 120))
    console.print(f"{len(grid)} design points, {len(points)} plans, {workers} worker(s)")
    for helix in (False, True):
        front = pareto_front([p for p in points if p.helix == helix])
        console.print(f"[bold]{'with' if helix else 'without'} Helix[/bold]: {len(front)} frontier points")
        for p in front:
            where = f"{p.hardware} L={p.context} " if len(grid) > len(args.gpus) * len(args.batches) else ""
            console.print(f"  {where}B={p.batch:<5} {p.gpus:>4} GPUs  TTL {p.ttl_seconds * 1e3:8.3f} ms  "
                          f"{p.tokens_per_s_per_user:8.1f} tok/s/user  {p.tokens_per_s_per_gpu:8.1f} tok/s/GPU  {p.plan}")
    if skipped:
        console.print(f"{len(skipped)} points had no feasible plan (listed in pareto.json)")
    console.print(f"wrote {paths['json']} and {paths['png']}")
    return 0
