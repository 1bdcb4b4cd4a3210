"""`helixplan explain`: why a plan — binding constraints, runner-ups, exclusions."""

from __future__ import annotations

import argparse
import sys

from ir.plan import Plan

NAME = "explain"
HELP = "Explain a plan.json: binding constraints, runner-up plans and excluded strategies."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("plan", metavar="PLAN", help="plan.json or the directory holding it")


def run(args: argparse.Namespace) -> int:
    from planner.report import explain_text

    sys.stdout.write(explain_text(Plan.load(args.plan)))
    return 0
