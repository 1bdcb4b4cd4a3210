"""What a strategy is priced against: workload, hardware, mesh and its placement."""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

from cost_models import CostModel, MeshPlacement
from ir.mesh import AXIS_ORDER, Mesh
from ir.workload import DTYPE_BYTES, Workload


@dataclass(frozen=True, kw_only=True)
class PlanContext:
    workload: Workload
    cost: CostModel
    mesh: Mesh

    @property
    def placement(self) -> MeshPlacement:
        return _placement(self.mesh)

    @property
    def act_bytes(self) -> float:
        return DTYPE_BYTES[self.workload.act_dtype]

    @property
    def weight_bytes(self) -> float:
        return DTYPE_BYTES[self.workload.weight_dtype]

    @property
    def kv_bytes(self) -> float:
        return DTYPE_BYTES[self.workload.kv_dtype]

    @property
    def is_decode(self) -> bool:
        return self.workload.kind == "decode"

    @property
    def is_train(self) -> bool:
        return self.workload.kind == "train"

    def replica_batch(self) -> int:
        """Sequences per data-parallel replica (the dp axis always splits the batch)."""
        return self.workload.batch // self.mesh.size("dp")

    def replica_tokens(self) -> int:
        """New tokens per sequence on one GPU: T, or under context parallelism T padded to a
        multiple of 2·cp (the load-balanced chunks) split over cp."""
        cp = self.mesh.size("cp")
        if cp == 1:
            return self.workload.seq
        return -(-self.workload.seq // (2 * cp)) * 2

    def group_size(self, axes: str | tuple[str, ...]) -> int:
        axes = (axes,) if isinstance(axes, str) else axes
        n = 1
        for a in axes:
            n *= self.mesh.size(a)
        return n

    def axes_label(self, axes: tuple[str, ...]) -> str:
        """The axes of a group that have size > 1, as breakdown keys name them (`kvp×tp`)."""
        return "×".join(a for a in axes if self.mesh.size(a) > 1)

    def collective_s(self, kind: str, nbytes: float, axes: str | tuple[str, ...]) -> float:
        """A collective run at once by every group spanning `axes` (one axis, or several
        adjacent ones acting as one group); the slowest group sets the time."""
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        if self.group_size(axes) == 1 or nbytes <= 0:
            return 0.0
        groups = _groups_by_shape(self.mesh, axes, self.cost.hardware.scaleup_domain_gpus)
        return max(_collective_s(self.cost, kind, nbytes, g) for g in groups)

    def ring_send_s(self, nbytes: float, axis: str) -> float:
        """One step of a ring along `axis` in which every rank sends `nbytes` to the next at
        once: the step takes as long as the slowest neighbour link of any ring, wrap-around
        included (with cp outside tp, a ring of four ranks four apart on 8-GPU nodes has two
        NVLink hops and two across nodes)."""
        if self.mesh.size(axis) == 1 or nbytes <= 0:
            return 0.0
        pairs = _ring_pairs_by_shape(self.mesh, axis, self.cost.hardware.scaleup_domain_gpus)
        return max(_collective_s(self.cost, "send_recv", nbytes, p) for p in pairs)


@functools.lru_cache(maxsize=1 << 16)
def _collective_s(cost: CostModel, kind: str, nbytes: float, group: tuple[int, ...]) -> float:
    """Meshes of one search (and the points of a sweep) ask for the same collectives often."""
    return cost.collective(kind, nbytes, group)


@functools.lru_cache(maxsize=4096)
def _groups_by_shape(
    mesh: Mesh, axes: tuple[str, ...], scaleup_domain_gpus: int
) -> tuple[tuple[int, ...], ...]:
    """One GPU group per distinct way the groups spanning `axes` fall on the scale-up domains.

    A collective's price depends on its group only through that shape (group size and GPUs
    per domain), so the slowest group is among these; a 64-GPU mesh has 64 groups of one
    axis but one or two shapes, and the mesh search asks for the same groups thousands of
    times. Rank r runs on GPU r (`MeshPlacement` lays meshes out from GPU 0)."""
    if len(axes) == 1:
        groups = [tuple(g) for g in _placement(mesh).groups(axes[0])]
    else:
        groups = [tuple(g) for g in mesh.groups_over(axes)]
    seen: dict[tuple[int, ...], tuple[int, ...]] = {}
    for group in groups:
        counts = Counter(gpu // scaleup_domain_gpus for gpu in group)
        shape = tuple(counts[d] for d in sorted(counts))
        seen.setdefault(shape, group)
    return tuple(seen.values())


@functools.lru_cache(maxsize=4096)
def _ring_pairs_by_shape(
    mesh: Mesh, axis: str, scaleup_domain_gpus: int
) -> tuple[tuple[int, int], ...]:
    """One (sender, receiver) pair per kind of neighbour link in the rings along `axis`: a
    pair inside one scale-up domain and/or one across two (a send's price depends on nothing
    else)."""
    seen: dict[bool, tuple[int, int]] = {}
    for group in _placement(mesh).groups(axis):
        for i, gpu in enumerate(group):
            nxt = group[(i + 1) % len(group)]
            seen.setdefault(gpu // scaleup_domain_gpus == nxt // scaleup_domain_gpus, (gpu, nxt))
    return tuple(seen.values())


def _placement(mesh: Mesh) -> MeshPlacement:
    return MeshPlacement(axes=tuple((a.value, mesh.size(a)) for a in AXIS_ORDER))
