"""Messages that explain a plan: why no plan exists, and how each runner-up differs.

Errors name the binding constraint with its numbers (STYLE.md §8). Nothing here solves: the
solves behind these messages happen in `passes.parallelize.ilp`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ir.errors import InfeasiblePlanError

if TYPE_CHECKING:
    from passes.parallelize.ilp import OptionChange, Problem


# ---------------------------------------------------------------------------------------
# Infeasibility diagnostics
# ---------------------------------------------------------------------------------------


def _check_simple_bounds(problem: Problem) -> None:
    """Raise when a block has no option, memory cannot fit, or the budget is below a bound."""
    for block in problem.blocks:
        if not block.options:
            raise InfeasiblePlanError(
                f"Block {block.name!r} has no candidate strategy, so no plan exists. "
                "Check the GPU count and mesh: every strategy of this block was ruled out."
            )
    min_memory = problem.fixed_memory_bytes + sum(
        min(o.memory_bytes for o in b.options) for b in problem.blocks
    )
    if min_memory > problem.memory_capacity_bytes:
        per_group: dict[str, float] = {}
        for b in problem.blocks:
            per_group[b.group] = per_group.get(b.group, 0.0) + min(
                o.memory_bytes for o in b.options
            )
        largest = sorted(per_group.items(), key=lambda item: -item[1])[:3]
        listing = ", ".join(f"{group} {_fmt_bytes(num)}" for group, num in largest)
        raise InfeasiblePlanError(
            f"Memory binds: even the smallest option of every block needs {_fmt_bytes(min_memory)} "
            f"per GPU ({_fmt_bytes(problem.fixed_memory_bytes)} fixed; largest groups: {listing}), "
            f"but the capacity is {_fmt_bytes(problem.memory_capacity_bytes)}. "
            "Use more GPUs (more sharding), a smaller batch or context, or GPUs with more memory."
        )
    if problem.time_budget_s is not None:
        fastest_s = _time_lower_bound_s(problem)
        if fastest_s > problem.time_budget_s:
            raise InfeasiblePlanError(
                f"The time budget binds: it is {_fmt_s(problem.time_budget_s)}, but the fastest "
                f"option of every block with the cheapest resharding on every edge, ignoring "
                f"memory, already takes {_fmt_s(fastest_s)}. Raise the budget to at least that, "
                "or use more or faster GPUs."
            )


def _time_lower_bound_s(problem: Problem) -> float:
    blocks = {b.name: b for b in problem.blocks}
    total = sum(min(o.time_s for o in b.options) for b in problem.blocks)
    for edge in problem.edges:
        num_pairs = len(blocks[edge.src].options) * len(blocks[edge.dst].options)
        if len(edge.cost_s) == num_pairs:
            total += min(edge.cost_s.values())
    return total


def _time_budget_error(
    problem: Problem,
    fastest_s: float | None,
    proven_optimal: bool,
    bound_s: float,
    time_limit_s: float,
) -> InfeasiblePlanError:
    """Explain an infeasible solve: memory fits on its own, so the time budget binds.

    `fastest_s` is the fastest plan that fits in memory, found by a re-solve without the
    budget (None when that found none); `bound_s` is that re-solve's lower bound.
    """
    budget_s = problem.time_budget_s if problem.time_budget_s is not None else math.inf
    if fastest_s is None:
        fastest = "no plan that fits in memory was found to compare with"
    else:
        proof = (
            "proven optimal"
            if proven_optimal
            else f"best found in {time_limit_s:g} s; lower bound {_fmt_s(bound_s)}"
        )
        fastest = f"the fastest plan that fits in memory takes {_fmt_s(fastest_s)} ({proof})"
    return InfeasiblePlanError(
        f"The time budget binds: it is {_fmt_s(budget_s)}, but {fastest}. Ignoring memory and "
        f"resharding the blocks alone would take {_fmt_s(_time_lower_bound_s(problem))}, so the "
        f"memory cap of {_fmt_bytes(problem.memory_capacity_bytes)} per GPU and resharding make "
        "up the rest. Raise the budget, or use more GPUs or GPUs with more memory."
    )


# ---------------------------------------------------------------------------------------
# Runner-up reasons
# ---------------------------------------------------------------------------------------


def _runner_up_reason(
    rank: int, objective_s: float, best_s: float, changes: Sequence[OptionChange]
) -> str:
    slower = objective_s - best_s
    percent = 100.0 * slower / best_s if best_s > 0 else 0.0
    moved = "; ".join(
        f"{c.unit}: {c.optimum_option} -> {c.option}"
        + (f" ({c.num_blocks} blocks)" if c.num_blocks > 1 else "")
        for c in changes[:4]
    )
    more = f"; and {len(changes) - 4} more" if len(changes) > 4 else ""
    return (
        f"plan #{rank}: best plan left after cutting off the {rank - 1} better one(s); "
        f"{_fmt_s(abs(slower))} ({abs(percent):.2f}%) {'slower' if slower >= 0 else 'faster'} "
        f"than the plan returned; differs in {moved}{more}"
    )


def _fmt_s(seconds: float) -> str:
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= factor:
            return f"{seconds / factor:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns"


def _fmt_bytes(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.3f} GiB"
