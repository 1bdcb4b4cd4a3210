"""The cluster as a graph, and where the ranks of a device mesh land on it.

GPUs are numbered domain by domain: GPU `g` sits in scale-up domain `g // scaleup_domain_gpus`.
Each domain has one NVSwitch node joining its GPUs (full bisection); every GPU also has its own
NIC into one non-blocking scale-out fabric node. A mesh is laid out row-major with its last
(innermost) axis varying fastest, so rank `r` runs on GPU `first_gpu + r`: the innermost axis
is contiguous and stays inside a domain when it fits; outer axes stride across domains. Which
axis is innermost therefore decides which collectives pay the scale-out links.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING

from cost_models.hardware import HardwareSpec
from ir.errors import InputError

if TYPE_CHECKING:
    import networkx as nx

SCALEUP = "scaleup"
SCALEOUT = "scaleout"


def gpu_node(gpu: int) -> tuple[str, int]:
    return ("gpu", gpu)


def build_cluster_graph(hw: HardwareSpec, num_gpus: int) -> nx.Graph:
    """GPUs, one scale-up switch per domain, one scale-out fabric; links carry their
    `kind`, per-direction effective `bytes_per_s` (peak × link efficiency) and `latency_s`."""
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise InputError(f"number of GPUs is {num_gpus!r}; needed a positive integer")
    import networkx as nx  # the planner prices groups by shape (`group_shape`), not the graph

    graph = nx.Graph(hardware=hw.name, num_gpus=num_gpus)
    domains = sorted({hw.domain_of(g) for g in range(num_gpus)})
    for d in domains:
        graph.add_node(("switch", d), kind="scaleup_switch", domain=d)
    if len(domains) > 1:
        graph.add_node(("fabric", 0), kind="scaleout_fabric")
    for g in range(num_gpus):
        d = hw.domain_of(g)
        graph.add_node(gpu_node(g), kind="gpu", domain=d)
        graph.add_edge(
            gpu_node(g), ("switch", d), kind=SCALEUP,
            bytes_per_s=hw.scaleup_bytes_per_s * hw.scaleup_link_efficiency,
            latency_s=hw.scaleup_latency_s / 2,
        )
        if len(domains) > 1:
            graph.add_edge(
                gpu_node(g), ("fabric", 0), kind=SCALEOUT,
                bytes_per_s=hw.scaleout_bytes_per_s * hw.scaleout_link_efficiency,
                latency_s=hw.scaleout_latency_s / 2,
            )
    return graph


def path_link_kinds(graph: nx.Graph, a: int, b: int) -> set[str]:
    """Kinds of the links on the lowest-latency path between two GPUs."""
    import networkx as nx

    path = nx.shortest_path(graph, gpu_node(a), gpu_node(b), weight="latency_s")
    return {graph.edges[u, v]["kind"] for u, v in zip(path, path[1:], strict=False)}


@dataclass(frozen=True, kw_only=True)
class GroupShape:
    """How a group of GPUs falls on the scale-up domains."""

    size: int
    gpus_per_domain: tuple[int, ...]

    @property
    def domains(self) -> int:
        return len(self.gpus_per_domain)

    @property
    def uniform(self) -> bool:
        return len(set(self.gpus_per_domain)) == 1


def group_shape(hw: HardwareSpec, group: Iterable[int]) -> GroupShape:
    """Validate a group of GPU ids and count its GPUs per scale-up domain."""
    members = list(group)
    if not members:
        raise InputError("a communication group is empty; needed at least one GPU id")
    for g in members:
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise InputError(f"GPU id {g!r} in group {members} is not a non-negative integer")
    if len(set(members)) != len(members):
        raise InputError(f"group {members} lists a GPU twice; each GPU may appear once")
    counts = Counter(hw.domain_of(g) for g in members)
    return GroupShape(size=len(members), gpus_per_domain=tuple(counts[d] for d in sorted(counts)))


@dataclass(frozen=True, kw_only=True)
class MeshPlacement:
    """A device mesh on physical GPUs. `axes` are (name, size) pairs, outermost first."""

    axes: tuple[tuple[str, int], ...]
    first_gpu: int = 0

    def __post_init__(self) -> None:
        names = [name for name, _ in self.axes]
        if len(set(names)) != len(names):
            raise InputError(f"mesh axes {names} repeat a name; each axis must be named once")
        for name, size in self.axes:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise InputError(f"mesh axis {name!r} has size {size!r}; needed a positive integer")
        if isinstance(self.first_gpu, bool) or not isinstance(self.first_gpu, int) or (
            self.first_gpu < 0
        ):
            raise InputError(f"first_gpu is {self.first_gpu!r}; needed a non-negative integer")

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(size for _, size in self.axes)

    @property
    def num_ranks(self) -> int:
        n = 1
        for s in self.sizes:
            n *= s
        return n

    def _axis_index(self, axis: str) -> int:
        for i, (name, _) in enumerate(self.axes):
            if name == axis:
                return i
        raise InputError(
            f"mesh axis {axis!r} is not in the mesh; its axes are {[n for n, _ in self.axes]}"
        )

    def coords(self, rank: int) -> tuple[int, ...]:
        """Mesh coordinates of a rank (row-major, last axis fastest)."""
        if not 0 <= rank < self.num_ranks:
            raise InputError(f"rank {rank} is outside the mesh of {self.num_ranks} ranks")
        out = []
        for size in reversed(self.sizes):
            out.append(rank % size)
            rank //= size
        return tuple(reversed(out))

    def rank(self, coords: Sequence[int]) -> int:
        if len(coords) != len(self.axes) or any(
            not 0 <= c < s for c, s in zip(coords, self.sizes, strict=True)
        ):
            raise InputError(f"coordinates {tuple(coords)} do not fit mesh sizes {self.sizes}")
        r = 0
        for c, size in zip(coords, self.sizes, strict=True):
            r = r * size + c
        return r

    def gpu(self, rank: int) -> int:
        return self.first_gpu + rank

    def groups(self, axis: str) -> list[tuple[int, ...]]:
        """The GPU groups that communicate along `axis`: one group per setting of the other
        axes, each ordered by the axis coordinate."""
        i = self._axis_index(axis)
        others = [range(s) for j, s in enumerate(self.sizes) if j != i]
        out = []
        for rest in product(*others):
            group = []
            for c in range(self.sizes[i]):
                coords = list(rest)
                coords.insert(i, c)
                group.append(self.gpu(self.rank(coords)))
            out.append(tuple(group))
        return out
