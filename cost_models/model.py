"""`CostModel`: the one object passes hold to price kernels and collectives on a cluster."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cost_models import compute
from cost_models.comm import collective_seconds
from cost_models.hardware import HardwareSpec
from cost_models.topology import MeshPlacement


@dataclass(frozen=True, kw_only=True)
class CostModel:
    """Prices on `hardware`; `cuda_graphs` says whether kernels are replayed from a CUDA
    graph (lower per-kernel floor) or launched eagerly."""

    hardware: HardwareSpec
    cuda_graphs: bool = False

    def kernel(self, work: compute.KernelWork) -> float:
        return compute.kernel_seconds(self.hardware, work, cuda_graphs=self.cuda_graphs)

    def gemm(self, m: int, k: int, n: int, dtype: str = "bf16", *, batch: int = 1) -> float:
        return self.kernel(compute.gemm_work(m, k, n, dtype, batch=batch))

    def attention_prefill(self, **shape: Any) -> float:
        """Keyword arguments of `compute.attention_prefill_work`."""
        return self.kernel(compute.attention_prefill_work(**shape))

    def attention_decode(self, **shape: Any) -> float:
        """Keyword arguments of `compute.attention_decode_work`."""
        return self.kernel(compute.attention_decode_work(**shape))

    def elementwise(self, nbytes: float) -> float:
        return compute.elementwise_seconds(self.hardware, nbytes, cuda_graphs=self.cuda_graphs)

    def collective(
        self, kind: str, nbytes: float, group: Iterable[int], algorithm: str = "auto"
    ) -> float:
        return collective_seconds(self.hardware, kind, nbytes, group, algorithm)

    def axis_collective(
        self, kind: str, nbytes: float, placement: MeshPlacement, axis: str,
        algorithm: str = "auto",
    ) -> float:
        """A collective run by every group along a mesh axis at once: the slowest group sets
        the time (groups use disjoint GPUs, so they do not share per-GPU links)."""
        return max(
            collective_seconds(self.hardware, kind, nbytes, group, algorithm)
            for group in placement.groups(axis)
        )
