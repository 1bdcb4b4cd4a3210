"""Per-tensor placement over named mesh axes, and the local shapes it implies.

A `Layout` gives one `Placement` per active mesh axis (an axis of size > 1): `Replicate`
(every rank of the axis holds the whole tensor), `Shard(dim)` (rank i holds the i-th of n
equal pieces along `dim`) or `Partial` (each rank holds a summand; the tensor is their sum).
A shard may be sectioned: `Shard(dim, sections)` cuts `dim` into consecutive sections (a
fused projection's Q|K|V or gate|up columns) and rank i holds the i-th equal piece of every
section, concatenated in section order — Megatron's head split of a fused projection, so
that the model's own split into sections runs locally.
When two axes shard the same dim, the outer axis (earlier in mesh order) splits first, so a
rank's piece is the inner axis' share of the outer axis' piece — as in DTensor.

This module imports only `ir/` so that it can move to `ir/` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from ir.errors import PlannerError
from ir.polynomial import Polynomial, as_polynomial


class LoweringError(PlannerError):
    """A (graph, plan) pair cannot be lowered to per-rank code: an op the lowering does not
    know meets a sharded tensor, or a split does not divide. The planner should not offer
    the strategy that caused it."""


@dataclass(frozen=True)
class Placement:
    kind: str  # "R" replicate, "S" shard, "P" partial sum
    dim: int = -1
    sections: tuple[int, ...] = ()  # a sectioned shard: the global sizes of dim's sections

    def __post_init__(self) -> None:
        if self.kind not in ("R", "S", "P"):
            raise ValueError(f"placement kind {self.kind!r} is not R, S or P")
        if self.sections and (self.kind != "S" or len(self.sections) < 2):
            raise ValueError(f"only a shard is sectioned, in two or more sections: {self}")

    @property
    def is_shard(self) -> bool:
        return self.kind == "S"

    @property
    def is_partial(self) -> bool:
        return self.kind == "P"

    @property
    def is_replicate(self) -> bool:
        return self.kind == "R"

    def moved(self, dim: int) -> Placement:
        """The same shard (sections kept) on another dim, as a view or transpose moves it."""
        return Placement("S", dim, self.sections)

    def __str__(self) -> str:
        if self.sections:
            return f"Shard({self.dim}; sections {'+'.join(map(str, self.sections))})"
        return {"R": "Replicate", "P": "Partial"}.get(self.kind) or f"Shard({self.dim})"


REPLICATE = Placement("R")
PARTIAL = Placement("P")


def shard(dim: int, sections: tuple[int, ...] = ()) -> Placement:
    return Placement("S", dim, tuple(sections))


@dataclass(frozen=True)
class Layout:
    """Placements over the active axes, in mesh order (outermost first)."""

    placements: tuple[tuple[str, Placement], ...]

    @staticmethod
    def replicated(axes: tuple[str, ...]) -> Layout:
        return Layout(tuple((a, REPLICATE) for a in axes))

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(a for a, _ in self.placements)

    def on(self, axis: str) -> Placement:
        for a, p in self.placements:
            if a == axis:
                return p
        raise KeyError(axis)

    def with_axis(self, axis: str, placement: Placement) -> Layout:
        return Layout(tuple((a, placement if a == axis else p) for a, p in self.placements))

    def axes_sharding(self, dim: int) -> tuple[str, ...]:
        return tuple(a for a, p in self.placements if p.is_shard and p.dim == dim)

    @property
    def is_replicated(self) -> bool:
        return all(p.is_replicate for _, p in self.placements)

    def describe(self) -> str:
        if not self.placements:
            return "whole"
        return " ".join(f"{a}={p}" for a, p in self.placements)

    def tag(self) -> str:
        """A short identifier fragment (`tpS2`, `dpS0_tpR`)."""
        return "_".join(
            f"{a}{p.kind}{p.dim if p.is_shard else ''}" + "".join(f"s{n}" for n in p.sections)
            for a, p in self.placements
        )


def local_shape(
    shape: tuple[Polynomial, ...], layout: Layout, sizes: dict[str, int], *, what: str
) -> tuple[Polynomial, ...]:
    """The shape one rank holds. Concrete dims must divide; symbolic ones (B, T, L) are
    checked by the generated program at run time."""
    out = []
    for d, size in enumerate(shape):
        n = 1
        for a in layout.axes_sharding(d):
            n *= sizes[a]
        size = as_polynomial(size)
        concrete = size.as_int()
        if n > 1 and concrete is not None and concrete % n:
            raise LoweringError(
                f"{what}: dim {d} of size {size} cannot be split {n} ways "
                f"({layout.describe()}); choose a mesh whose axis sizes divide it"
            )
        if n == 1:
            out.append(size)
        else:
            out.append(size / n)
    return tuple(out)
