"""Exposed communication: the part of a collective's time not hidden behind independent
compute.

Two schedules are modelled. Stages: each collective runs beside compute that does not depend
on it (e.g. a bucketed gradient all-reduce beside the next layer's backward); exposed time is
`sum(max(0, comm - hidden compute))`. Slices (HOP-B, ring send/recv beside partial attention):
the work is cut into slices; slice i's communication starts when its compute is done and the
previous communication has finished, and runs while slice i+1 computes. Compute and
communication each run on one stream, in order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ir.errors import InputError


def _seconds(name: str, v: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
        raise InputError(f"{name} is {v!r}; needed a finite number of seconds >= 0")
    return float(v)


@dataclass(frozen=True, kw_only=True)
class OverlapStage:
    """One collective and the independent compute it can hide behind."""

    comm_s: float
    overlappable_compute_s: float = 0.0

    def __post_init__(self) -> None:
        _seconds("comm_s", self.comm_s)
        _seconds("overlappable_compute_s", self.overlappable_compute_s)

    @property
    def exposed_s(self) -> float:
        return max(0.0, self.comm_s - self.overlappable_compute_s)


def exposed_comm_seconds(stages: Iterable[OverlapStage]) -> float:
    """Communication time left on the critical path after overlap."""
    return sum(stage.exposed_s for stage in stages)


@dataclass(frozen=True, kw_only=True)
class SlicedTimeline:
    total_s: float
    compute_s: float

    @property
    def exposed_comm_s(self) -> float:
        return self.total_s - self.compute_s


def sliced_overlap(
    compute_s: Sequence[float], comm_s: Sequence[float]
) -> SlicedTimeline:
    """Two in-order streams: compute slice i, then its communication, which overlaps the
    compute of later slices. End of comm i = max(end of compute i, end of comm i-1) + comm i.
    """
    if len(compute_s) != len(comm_s) or not compute_s:
        raise InputError(
            f"sliced overlap needs one compute and one comm time per slice; got "
            f"{len(compute_s)} compute and {len(comm_s)} comm times"
        )
    compute_end = comm_end = 0.0
    for i, (c, m) in enumerate(zip(compute_s, comm_s, strict=True)):
        compute_end += _seconds(f"compute_s[{i}]", c)
        comm_end = max(compute_end, comm_end) + _seconds(f"comm_s[{i}]", m)
    return SlicedTimeline(total_s=max(compute_end, comm_end), compute_s=compute_end)


def batch_sliced_overlap(
    compute_total_s: float, comm_total_s: float, slices: int
) -> SlicedTimeline:
    """Even split of a compute and a communication over `slices` slices (HOP-B). Per-slice
    overheads (launch floors, alpha) are the caller's: price each slice, then use
    `sliced_overlap` directly when slicing changes the per-slice times."""
    if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
        raise InputError(f"slices is {slices!r}; needed a positive integer")
    c = _seconds("compute_total_s", compute_total_s) / slices
    m = _seconds("comm_total_s", comm_total_s) / slices
    return sliced_overlap([c] * slices, [m] * slices)
