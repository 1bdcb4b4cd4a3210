"""`helixplan inspect`: the blocks helixplan recognized, their dims, params and costs."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from ir.errors import InputError
from ir.graph import Graph
from ir.tensor import evaluate
from planner.commands.common import add_model_arguments, add_shape_arguments
from planner.frontend import load_graph
from planner.model_source import parse_model_args, resolve_source

NAME = "inspect"
HELP = "Trace a model and show its blocks, repeated-layer groups, dims, params and FLOPs."


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_shape_arguments(p, batch=1, seq=1, context="4k")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def inspect_report(graph: Graph, *, batch: int, seq: int, context: int) -> dict:
    point = {"B": batch, "T": seq, "L": context}
    blocks = [
        {
            "name": b.name,
            "kind": b.kind,
            "layer": b.layer,
            "group": b.group,
            "dims": dict(b.dims),
            "params": b.param_count,
        }
        for b in graph.blocks
    ]
    groups: dict[str, dict] = {}
    for b in graph.blocks:
        g = groups.get(b.group)
        if g is None:
            groups[b.group] = {
                "group": b.group,
                "kind": b.kind,
                "count": 1,
                "layers": [b.layer] if b.layer is not None else [],
                "dims": dict(b.dims),
                "params_each": b.param_count,
                "flops": str(b.flops),
                "bytes": str(b.bytes_moved),
                "flops_value": evaluate(b.flops, **point),
                "bytes_value": evaluate(b.bytes_moved, **point),
            }
        else:
            g["count"] += 1
            if b.layer is not None:
                g["layers"].append(b.layer)
    return {
        "params": graph.param_count,
        "blocks": blocks,
        "groups": list(groups.values()),
        "at": point,
    }


def _layers_text(layers: list[int]) -> str:
    if not layers:
        return "-"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def run(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.seq < 1:
        raise InputError(f"--batch and --seq must be >= 1, got {args.batch} and {args.seq}")
    source = resolve_source(args.model, parse_model_args(args.model_arg))
    loaded = load_graph(source)
    report = inspect_report(loaded.graph, batch=args.batch, seq=args.seq, context=args.context)
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    console = Console(width=max(Console().width, 150))
    table = Table(
        title=f"{source.display}: {_human(report['params'])} params, "
        f"{len(report['blocks'])} blocks in {len(report['groups'])} groups "
        f"(B={args.batch}, T={args.seq}, L={args.context})"
    )
    for col in ("group", "kind", "layers", "dims", "params", "FLOPs (formula)", "FLOPs", "bytes"):
        table.add_column(col, overflow="fold")
    for g in report["groups"]:
        dims = " ".join(f"{k}={v}" for k, v in g["dims"].items())
        table.add_row(
            g["group"],
            g["kind"],
            f"{_layers_text(g['layers'])} (x{g['count']})",
            dims,
            _human(g["params_each"]),
            g["flops"],
            _human(g["flops_value"]),
            _human(g["bytes_value"]),
        )
    console.print(table)
    secs = loaded.seconds
    how = (
        f"traced in {secs['capture']:.1f}s, passes {secs['passes']:.2f}s"
        if "capture" in secs
        else f"from the trace cache in {secs.get('cache_load', 0.0):.2f}s"
    )
    console.print(f"{how} (FLOPs/bytes are per block instance, one forward step)")
    return 0
