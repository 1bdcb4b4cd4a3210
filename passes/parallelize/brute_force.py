"""Exhaustive search over all plans: the reference the integer program is tested against.

It shares nothing with `ilp`'s reduction, scaling or solvers — it prices every plan straight
from the Problem's blocks and edges — so agreement between the two is evidence, not an echo.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator

from ir.errors import InfeasiblePlanError
from passes.parallelize.ilp import Problem

MAX_PLANS = 2_000_000


def brute_force(problem: Problem) -> tuple[dict[str, str], float]:
    """The fastest plan that fits memory and the time budget, and its time in seconds.

    With `share_groups` every block of a group takes the same option. Ties go to the plan
    enumerated first (earlier options of earlier units). Raises ValueError when there are
    more than MAX_PLANS plans and InfeasiblePlanError when none is feasible.
    """
    return ranked_plans(problem, 1)[0]


def ranked_plans(problem: Problem, k: int) -> list[tuple[dict[str, str], float]]:
    """The k fastest feasible plans (fewer if fewer exist), fastest first; see brute_force."""
    best = heapq.nsmallest(k, _feasible_plans(problem), key=lambda plan: (plan[1], plan[0]))
    if not best:
        raise InfeasiblePlanError("No plan fits the memory capacity and the time budget.")
    return [(assignment, seconds) for _, seconds, assignment in best]


def _feasible_plans(problem: Problem) -> Iterator[tuple[int, float, dict[str, str]]]:
    """(enumeration index, seconds, assignment) of every plan within memory and budget."""
    units: dict[str, list[str]] = {}
    for block in problem.blocks:
        units.setdefault(block.group if problem.share_groups else block.name, []).append(block.name)
    blocks = {block.name: block for block in problem.blocks}
    unit_options = [blocks[members[0]].options for members in units.values()]
    num_plans = math.prod(len(options) for options in unit_options)
    if num_plans > MAX_PLANS:
        raise ValueError(f"{num_plans} plans to enumerate; brute force stops at {MAX_PLANS}")

    picks_per_unit = itertools.product(*(range(len(options)) for options in unit_options))
    for index, picks in enumerate(picks_per_unit):
        chosen = {
            name: blocks[name].options[pick]
            for members, pick in zip(units.values(), picks, strict=True)
            for name in members
        }
        memory = problem.fixed_memory_bytes + sum(option.memory_bytes for option in chosen.values())
        if memory > problem.memory_capacity_bytes:
            continue
        seconds = sum(option.time_s for option in chosen.values())
        for edge in problem.edges:
            seconds += edge.cost_s.get((chosen[edge.src].name, chosen[edge.dst].name), 0.0)
        if problem.time_budget_s is not None and seconds > problem.time_budget_s:
            continue
        yield index, seconds, {name: option.name for name, option in chosen.items()}
