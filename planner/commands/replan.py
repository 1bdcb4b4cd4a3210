"""`helixplan replan`: replan the replicas of a plan that lost GPUs, at a reduced degree."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ir.errors import InputError

NAME = "replan"
HELP = ("Replan a plan's replicas after GPU failures on their largest even split; report the "
        "throughput kept against dropping them; write each reduced replica's plan and program.")


def _gpu_list(text: str) -> list[int]:
    try:
        values = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of GPU ids such as 3,17") from None
    if not values or values[0] < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of GPU ids >= 0")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", metavar="DIR/plan.json", help="a plan written by `helixplan plan`")
    p.add_argument("--failed", type=_gpu_list, required=True, metavar="IDS", help="failed GPU ids, e.g. 3,17")
    p.add_argument("--out", default=None, help="output directory (default: DIR/replan)")
    p.add_argument("--time-limit", type=float, default=60.0, help="solver limit per mesh (s)")


def run(args: argparse.Namespace) -> int:
    from ir.mesh import Mesh
    from ir.plan import Plan
    from planner.replan import replan, write_replan

    target = Path(args.plan)
    plan = Plan.load(target)
    directory = target if target.is_dir() else target.parent
    out = Path(args.out) if args.out else directory / "replan"
    if out.resolve() == directory.resolve():
        raise InputError(f"--out {out} is the plan's own directory; give another so the plan is kept")
    result = replan(plan, args.failed, time_limit_s=args.time_limit)
    paths = write_replan(result, out)
    console = Console(width=max(Console().width, 120), markup=False)
    console.print(f"{result.replicas} replica(s) of {plan.world_size // result.replicas} GPUs, "
                  f"{result.replica_tokens_per_s:.1f} tokens/s each; failed GPUs {result.failed}")
    for a in result.affected:
        if a.run is None:
            console.print(f"  replica {a.replica} (GPUs {a.gpus}): dropped - {a.why}")
        else:
            console.print(f"  replica {a.replica} (GPUs {a.gpus}): replanned on {a.degree} GPUs "
                          f"{a.surviving[:a.degree]} as {Mesh.of(**a.run.plan.mesh)}, {a.tokens_per_s:.1f} tokens/s "
                          f"({a.why})")
    console.print(f"throughput kept: {result.kept_if_replanned:.1%} replanned vs "
                  f"{result.kept_if_dropped:.1%} dropping the affected replicas")
    console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
