"""PlanContext prices a collective along mesh axes from one group per shape; these checks
compare it with pricing every group (or every ring hop) one by one."""

from __future__ import annotations

import pytest

from cost_models import CostModel, load_hardware
from ir.mesh import Mesh
from ir.workload import Workload
from passes.parallelize.context import PlanContext

H100 = load_hardware("h100-sxm")  # 8 GPUs per NVLink domain
MESHES = [
    dict(cp=8),  # one ring inside a node
    dict(cp=4, tp=4),  # rings of 4 ranks 4 apart: two NVLink hops, two across nodes
    dict(cp=16),  # one ring over two nodes
    dict(dp=2, cp=2, tp=4),  # rings of 2 inside a node
    dict(cp=2, tp=8),  # rings of 2 across nodes only
    dict(cp=4, dp=4),  # cp outside dp: every hop crosses a node
]


def _ctx(**mesh: int) -> PlanContext:
    return PlanContext(workload=Workload(kind="prefill", batch=1, seq=4096),
                       cost=CostModel(hardware=H100), mesh=Mesh.of(**mesh))


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(f"{a}{n}" for a, n in m.items()))
def test_ring_send_is_the_slowest_hop_of_any_ring(mesh):
    ctx = _ctx(**mesh)
    nbytes = 32 * 2**20
    every_hop = max(
        ctx.cost.collective("send_recv", nbytes, (g[i], g[(i + 1) % len(g)]))
        for g in ctx.mesh.groups("cp") for i in range(len(g))
    )
    assert ctx.ring_send_s(nbytes, "cp") == every_hop


def test_ring_send_crosses_nodes_only_where_a_hop_does():
    inside, mixed = _ctx(cp=8), _ctx(cp=4, tp=4)
    nbytes = 32 * 2**20
    assert mixed.ring_send_s(nbytes, "cp") > 5 * inside.ring_send_s(nbytes, "cp")
    assert inside.ring_send_s(0, "cp") == 0.0 and _ctx(tp=8).ring_send_s(nbytes, "cp") == 0.0


@pytest.mark.parametrize("kind", ["all_reduce", "all_gather", "all_to_all"])
def test_axis_collective_is_the_slowest_group(kind):
    for mesh in MESHES:
        ctx = _ctx(**mesh)
        for axis in mesh:
            nbytes = 8 * 2**20
            every_group = max(ctx.cost.collective(kind, nbytes, g) for g in ctx.mesh.groups(axis))
            assert ctx.collective_s(kind, nbytes, (axis,)) == every_group, (mesh, axis)
