"""What a strategy is priced against: workload, hardware, mesh and its placement."""

from __future__ import annotations

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
        return MeshPlacement(axes=tuple((a.value, self.mesh.size(a)) for a in AXIS_ORDER))

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

    def collective_s(self, kind: str, nbytes: float, axes: str | tuple[str, ...]) -> float:
        """A collective run at once by every group spanning `axes` (one axis, or several
        adjacent ones acting as one group); the slowest group sets the time."""
        axes = (axes,) if isinstance(axes, str) else axes
        if self.group_size(axes) == 1 or nbytes <= 0:
            return 0.0
        if len(axes) == 1:
            return self.cost.axis_collective(kind, nbytes, self.placement, axes[0])
        return max(self.cost.collective(kind, nbytes, g) for g in self.mesh.groups_over(axes))
