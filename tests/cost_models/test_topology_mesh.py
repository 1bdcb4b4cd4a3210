"""Cluster graph and mesh placement."""

import pytest

from cost_models import PRESETS, MeshPlacement, build_cluster_graph, group_shape
from cost_models.topology import path_link_kinds
from ir.errors import InputError

H100 = PRESETS["h100-sxm"]


def test_cluster_graph_has_gpus_switches_and_fabric():
    g = build_cluster_graph(H100, 16)
    kinds = [data["kind"] for _, data in g.nodes(data=True)]
    assert kinds.count("gpu") == 16
    assert kinds.count("scaleup_switch") == 2
    assert kinds.count("scaleout_fabric") == 1
    assert g.edges[("gpu", 3), ("switch", 0)]["bytes_per_s"] == pytest.approx(360e9)
    assert g.edges[("gpu", 9), ("fabric", 0)]["bytes_per_s"] == pytest.approx(45e9)
    assert path_link_kinds(g, 0, 7) == {"scaleup"}
    assert path_link_kinds(g, 0, 8) == {"scaleout"}


def test_single_domain_graph_has_no_fabric():
    g = build_cluster_graph(PRESETS["gb200-nvl72"], 72)
    assert ("fabric", 0) not in g
    assert path_link_kinds(g, 0, 71) == {"scaleup"}


def test_group_shape_counts_gpus_per_domain():
    assert group_shape(H100, [0, 1, 9, 15, 16]).gpus_per_domain == (2, 2, 1)
    assert group_shape(PRESETS["gb200-nvl72"], range(72)).domains == 1
    assert group_shape(PRESETS["gb200-nvl72"], range(73)).gpus_per_domain == (72, 1)


def test_mesh_coordinates_round_trip_innermost_fastest():
    mesh = MeshPlacement(axes=(("dp", 2), ("kvp", 3), ("tpa", 4)), first_gpu=8)
    assert mesh.num_ranks == 24
    assert mesh.coords(0) == (0, 0, 0)
    assert mesh.coords(5) == (0, 1, 1)
    assert mesh.coords(23) == (1, 2, 3)
    assert all(mesh.rank(mesh.coords(r)) == r for r in range(24))
    assert mesh.groups("tpa")[0] == (8, 9, 10, 11)
    assert mesh.groups("kvp")[0] == (8, 12, 16)
    assert mesh.groups("dp")[0] == (8, 20)
    assert len(mesh.groups("kvp")) == 8


def test_mesh_errors():
    with pytest.raises(InputError):
        MeshPlacement(axes=(("tp", 2), ("tp", 2)))
    with pytest.raises(InputError):
        MeshPlacement(axes=(("tp", 0),))
    with pytest.raises(InputError):
        MeshPlacement(axes=(("tp", 2),)).groups("dp")
    with pytest.raises(InputError):
        build_cluster_graph(H100, 0)
