"""Overlap scheduling: issue each collective as early as its input allows and wait for it
as late as its first reader allows, so independent work runs while it is in flight.

A list scheduler over each block's (and edge's) steps. Ready steps are taken in this order:
collective issues first, then compute in original program order, and a `Wait` only when no
other step is ready. The order is a pure function of the steps, so every rank issues its
collectives in the same order (which torch.distributed requires).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from ir.rank_program import (
    BlockProgram,
    Collective,
    EdgeProgram,
    RankProgram,
    Step,
    Wait,
    step_writes,
)


def schedule_steps(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    return tuple(steps[i] for i in schedule_order(steps))


def schedule_order(steps: tuple[Step, ...]) -> list[int]:
    """The scheduled order as indices into `steps`."""
    writer: dict[str, int] = {}
    for i, s in enumerate(steps):
        for name in step_writes(s):
            writer[name] = i
    issue_of = {s.handle: i for i, s in enumerate(steps) if isinstance(s, Collective)}
    deps: list[set[int]] = []
    for i, s in enumerate(steps):
        d = {writer[r] for r in s.reads() if r in writer and writer[r] != i}
        if isinstance(s, Wait):
            d.add(issue_of[s.handle])
        deps.append(d)
    done: set[int] = set()
    order: list[int] = []
    remaining = list(range(len(steps)))
    while remaining:
        ready = [i for i in remaining if deps[i] <= done]
        if not ready:
            raise RuntimeError("cyclic step dependencies; the lowering produced a bad program")
        issues = [i for i in ready if isinstance(steps[i], Collective)]
        work = [i for i in ready if not isinstance(steps[i], (Collective, Wait))]
        pick = (issues or work or ready)[0]
        order.append(pick)
        done.add(pick)
        remaining.remove(pick)
    return order


@dataclass(frozen=True)
class ScheduleOverlap:
    """Pass: RankProgram -> RankProgram with each block's and edge's steps reordered for
    overlap. Pre: a lowered program. Post: the same steps; every Wait after as much
    independent work as the dataflow allows. A block lowered as a renamed copy of another
    (`RankProgram.renamed_from`) has the same dataflow and takes that block's order."""

    name: ClassVar[str] = "schedule-overlap"

    def run(self, program: RankProgram) -> RankProgram:
        items: list[BlockProgram | EdgeProgram] = []
        orders: dict[str, list[int]] = {}
        for item in program.items:
            order = None
            if isinstance(item, BlockProgram):
                order = orders.get(program.renamed_from.get(item.name, ""))
            if order is None or len(order) != len(item.steps):
                order = schedule_order(item.steps)
            if isinstance(item, BlockProgram):
                orders[item.name] = order
            items.append(replace(item, steps=tuple(item.steps[i] for i in order)))
        return replace(program, items=tuple(items))
