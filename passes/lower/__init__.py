"""From a plan to a per-rank program: layout propagation, collective insertion, overlap.

`lower(graph, plan)` runs the two passes — `LowerToRanks` (passes/lower/lower.py) and
`ScheduleOverlap` (passes/lower/schedule.py) — and returns the `RankProgram` codegen renders.
"""

from __future__ import annotations

import time

from ir.graph import Graph
from ir.layout import Layout, LoweringError, Placement
from ir.plan import Plan
from ir.rank_program import RankProgram
from passes.lower.lower import LowerToRanks
from passes.lower.schedule import ScheduleOverlap


def lower(graph: Graph, plan: Plan, *, timings: dict[str, float] | None = None) -> RankProgram:
    t0 = time.perf_counter()
    program = LowerToRanks(plan=plan).run(graph)
    t1 = time.perf_counter()
    program = ScheduleOverlap().run(program)
    if timings is not None:
        timings[LowerToRanks.name] = t1 - t0
        timings[ScheduleOverlap.name] = time.perf_counter() - t1
    return program


__all__ = ["Layout", "LowerToRanks", "LoweringError", "Placement", "RankProgram", "ScheduleOverlap", "lower"]
