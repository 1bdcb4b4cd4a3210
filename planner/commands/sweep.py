"""`helixplan sweep`: best plans over batch sizes and GPU counts, with and without Helix."""

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
HELP = "Sweep batch sizes and GPU counts; write the Pareto frontier with and without Helix."


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
    p.add_argument("--hardware", default="h100-sxm")
    p.add_argument("--gpus", type=_int_list, required=True, help="GPU counts, e.g. 8,16,32,64")
    p.add_argument("--workload", choices=("decode",), default="decode")
    p.add_argument("--context", type=parse_tokens, required=True, help="KV length, e.g. 1M")
    p.add_argument("--batches", type=_int_list, required=True, help="batch sizes, e.g. 1,8,64")
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
    from planner.sweep import pareto_front, sweep_points, write_sweep

    if args.context < 1:
        raise InputError("--context must be at least 1 token for a decode sweep")
    source = resolve_source(args.model, parse_model_args(args.model_arg))
    hw = load_hardware(args.hardware)
    workload = Workload(kind="decode", batch=1, seq=1, context=args.context,
                        weight_dtype=args.weight_dtype, kv_dtype=args.kv_dtype,
                        act_dtype=args.act_dtype)
    loaded = load_graph(source)
    strategies = strategies_from_args(args.strategies) or DEFAULT_STRATEGIES
    total = len(args.gpus) * len(args.batches) * 2
    with Progress(transient=True) as bar:
        task = bar.add_task("planning", total=total)
        points, skipped = sweep_points(
            loaded, hardware=hw, workload=workload, gpu_counts=args.gpus, batches=args.batches,
            strategies=strategies, progress=lambda: bar.advance(task),
        )
    title = f"{source.display} {' '.join(f'{k}={v}' for k, v in source.model_args.items())}, decode L={args.context}, {hw.name}"
    paths = write_sweep(Path(args.out), points, skipped, title)
    console = Console(width=max(Console().width, 120))
    for helix in (False, True):
        front = pareto_front([p for p in points if p.helix == helix])
        console.print(f"[bold]{'with' if helix else 'without'} Helix[/bold]: {len(front)} frontier points")
        for p in front:
            console.print(f"  B={p.batch:<5} {p.gpus:>4} GPUs  TTL {p.ttl_seconds * 1e3:8.3f} ms  "
                          f"{p.tokens_per_s_per_user:8.1f} tok/s/user  {p.tokens_per_s_per_gpu:8.1f} tok/s/GPU  {p.plan}")
    if skipped:
        console.print(f"{len(skipped)} points had no feasible plan (listed in pareto.json)")
    console.print(f"wrote {paths['json']} and {paths['png']}")
    return 0
