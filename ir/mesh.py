"""Named device-mesh axes and meshes.

Axes are one enum, outermost first: `dp`, `cp`, `kvp`, `tp`, `ep`. A rank's coordinates are
row-major over that order, so the innermost axis (`tp`, then `ep`) holds consecutive ranks,
which the topology maps into one scale-up domain first.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from itertools import product

from ir.errors import InputError


class MeshAxis(str, Enum):
    DP = "dp"
    CP = "cp"
    KVP = "kvp"
    TP = "tp"
    EP = "ep"


AXIS_ORDER: tuple[MeshAxis, ...] = (MeshAxis.DP, MeshAxis.CP, MeshAxis.KVP, MeshAxis.TP, MeshAxis.EP)

# The model-parallel group: tensor-parallel strategies spread a block over kvp×tp as one group.
# Without Helix the kvp axis has size 1 and this is the tp axis; with Helix the output
# projection and the FFN reuse all kvp×tp GPUs. Planner and lowering both read this.
MODEL_AXES: tuple[str, ...] = ("kvp", "tp")


@dataclass(frozen=True)
class Mesh:
    """Sizes per axis (all five present; unused axes have size 1)."""

    sizes: tuple[tuple[MeshAxis, int], ...]

    @staticmethod
    def of(**sizes: int) -> Mesh:
        unknown = set(sizes) - {a.value for a in AXIS_ORDER}
        if unknown:
            raise InputError(
                f"unknown mesh axes {sorted(unknown)}; axes are {[a.value for a in AXIS_ORDER]}"
            )
        for k, v in sizes.items():
            if not isinstance(v, int) or v < 1:
                raise InputError(f"mesh axis {k} must have a positive integer size, got {v!r}")
        return Mesh(tuple((a, int(sizes.get(a.value, 1))) for a in AXIS_ORDER))

    @functools.cached_property
    def _size_of(self) -> dict[str, int]:
        return {a.value: s for a, s in self.sizes}

    def size(self, axis: MeshAxis | str) -> int:
        name = axis.value if isinstance(axis, MeshAxis) else axis
        size = self._size_of.get(name)
        if size is not None:
            return size
        raise InputError(f"unknown mesh axis {axis!r}; axes are {[a.value for a in AXIS_ORDER]}")

    @property
    def world_size(self) -> int:
        n = 1
        for _, s in self.sizes:
            n *= s
        return n

    def to_dict(self) -> dict[str, int]:
        return {a.value: s for a, s in self.sizes}

    def __str__(self) -> str:
        used = [f"{a.value}={s}" for a, s in self.sizes if s > 1]
        return "×".join(used) if used else "single"

    def coords(self, rank: int) -> dict[str, int]:
        """Mesh coordinates of a rank (row-major, innermost axis last)."""
        out: dict[str, int] = {}
        for axis, size in reversed(self.sizes):
            out[axis.value] = rank % size
            rank //= size
        return {a.value: out[a.value] for a, _ in self.sizes}

    def rank_of(self, coords: dict[str, int]) -> int:
        rank = 0
        for axis, size in self.sizes:
            rank = rank * size + coords.get(axis.value, 0)
        return rank

    def groups_over(self, axes: tuple[MeshAxis | str, ...]) -> list[list[int]]:
        """Rank groups spanning several axes at once (e.g. kvp×tp as one TP group): ranks
        that differ only in those axes' coordinates, ordered row-major within the group."""
        chosen = [MeshAxis(a) for a in axes]
        others = [(a, s) for a, s in self.sizes if a not in chosen]
        inner = [(a, s) for a, s in self.sizes if a in chosen]
        out = []
        for fixed in product(*(range(s) for _, s in others)):
            coords = {a.value: c for (a, _), c in zip(others, fixed, strict=True)}
            group = []
            for local in product(*(range(s) for _, s in inner)):
                local_coords = {a.value: c for (a, _), c in zip(inner, local, strict=True)}
                group.append(self.rank_of({**coords, **local_coords}))
            out.append(group)
        return out

    def groups(self, axis: MeshAxis | str) -> list[list[int]]:
        """Rank groups along one axis: ranks that differ only in that axis's coordinate."""
        axis = MeshAxis(axis)
        others = [(a, s) for a, s in self.sizes if a != axis]
        out = []
        for fixed in product(*(range(s) for _, s in others)):
            coords = {a.value: c for (a, _), c in zip(others, fixed, strict=True)}
            out.append([self.rank_of({**coords, axis.value: i}) for i in range(self.size(axis))])
        return out
