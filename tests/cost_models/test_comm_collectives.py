"""Collective times against hand-worked alpha-beta numbers on the h100-sxm preset.

h100-sxm: NVLink alpha 2e-6 s, bw 450e9 B/s x 0.8 efficiency = 360e9 B/s;
InfiniBand alpha 6e-6 s, bw 50e9 B/s x 0.9 = 45e9 B/s; 8 GPUs per domain.
"""

import pytest

from cost_models import PRESETS, CostModel, MeshPlacement, collective_seconds
from ir.errors import InputError

H100 = PRESETS["h100-sxm"]
GiB = 2**30
A_UP, BW_UP = 2e-6, 360e9
A_OUT, BW_OUT = 6e-6, 45e9
SPLIT = [0, 1, 2, 3, 8, 9, 10, 11]  # 4 GPUs in domain 0, 4 in domain 1


def test_link_constants_match_preset():
    assert H100.scaleup_bytes_per_s * H100.scaleup_link_efficiency == pytest.approx(BW_UP)
    assert H100.scaleout_bytes_per_s * H100.scaleout_link_efficiency == pytest.approx(BW_OUT)
    assert (H100.scaleup_latency_s, H100.scaleout_latency_s) == (A_UP, A_OUT)


def test_ring_all_reduce_1gib_on_8_gpus_of_one_domain():
    # 2*7*2e-6 + 2*(7/8)*2^30/360e9 = 28e-6 + 5.2195780e-3 = 5.2475780e-3 s
    expected = 2 * 7 * 2e-6 + 2 * (7 / 8) * 1073741824 / 360e9
    assert expected == pytest.approx(5.24757831e-3, rel=1e-8)
    assert collective_seconds(H100, "all_reduce", GiB, range(8), "ring") == pytest.approx(expected)
    # 1 GiB is bandwidth-bound: auto picks the ring (tree moves 2S instead of 1.75S).
    assert collective_seconds(H100, "all_reduce", GiB, range(8)) == pytest.approx(expected)


def test_all_reduce_split_over_two_domains_is_hierarchical_and_slower():
    # intra reduce-scatter and all-gather over g=4 on NVLink: 2*(3*2e-6 + (3/4)*2^30/360e9)
    intra = 2 * (3 * 2e-6 + 0.75 * 1073741824 / 360e9)
    # inter all-reduce of S/g = 2^28 over D=2 on InfiniBand: 2*1*6e-6 + 2*(1/2)*2^28/45e9
    inter = 2 * 6e-6 + 1.0 * 268435456 / 45e9
    hierarchical = intra + inter  # = 4.4859e-3 + 5.9772e-3 = 1.04631e-2 s
    assert hierarchical == pytest.approx(1.046316e-2, rel=1e-5)
    got = collective_seconds(H100, "all_reduce", GiB, SPLIT)
    assert got == pytest.approx(hierarchical)
    assert collective_seconds(H100, "all_reduce", GiB, SPLIT, "hierarchical") == pytest.approx(
        hierarchical
    )
    # flat ring: every step waits on InfiniBand; 4 NICs per domain striped = 180e9 B/s
    ring = 14 * 6e-6 + 1.75 * 1073741824 / 180e9
    assert collective_seconds(H100, "all_reduce", GiB, SPLIT, "ring") == pytest.approx(ring)
    assert ring > hierarchical
    assert got > collective_seconds(H100, "all_reduce", GiB, range(8)) * 1.9


def test_hierarchical_inside_one_domain_equals_ring():
    ring = collective_seconds(H100, "all_reduce", GiB, range(8), "ring")
    assert collective_seconds(H100, "all_reduce", GiB, range(8), "hierarchical") == (
        pytest.approx(ring)
    )


def test_small_all_reduce_prefers_tree():
    # 1 KiB: tree 2*3*2e-6 + 2*1024/360e9 = 12.0057e-6; ring 14*2e-6 + 1.75*1024/360e9 = 28.005e-6
    tree = 2 * 3 * 2e-6 + 2 * 1024 / 360e9
    assert collective_seconds(H100, "all_reduce", 1024, range(8)) == pytest.approx(tree)
    assert collective_seconds(H100, "all_reduce", 1024, range(8), "ring") == pytest.approx(
        14 * 2e-6 + 1.75 * 1024 / 360e9
    )


def test_all_gather_nbytes_is_output_and_reduce_scatter_nbytes_is_input():
    # 7*2e-6 + (7/8)*2^30/360e9
    expected = 7 * 2e-6 + 0.875 * 1073741824 / 360e9
    assert collective_seconds(H100, "all_gather", GiB, range(8)) == pytest.approx(expected)
    assert collective_seconds(H100, "reduce_scatter", GiB, range(8)) == pytest.approx(expected)
    # split: inter all-gather of S/g=2^28 over D=2 (6e-6 + 0.5*2^28/45e9) then intra over g=4
    split = (6e-6 + 0.5 * 268435456 / 45e9) + (3 * 2e-6 + 0.75 * 1073741824 / 360e9)
    assert collective_seconds(H100, "all_gather", GiB, SPLIT) == pytest.approx(split)


def test_all_to_all_pairwise():
    # one domain, 8 ranks, 1 GiB send buffer: 7*(2e-6 + 2^30/8/360e9)
    assert collective_seconds(H100, "all_to_all", GiB, range(8)) == pytest.approx(
        7 * (2e-6 + 1073741824 / 8 / 360e9)
    )
    # 16 ranks over 2 domains: 8 remote peers dominate: 8*(6e-6 + 2^30/16/45e9)
    got = collective_seconds(H100, "all_to_all", GiB, range(16))
    assert got == pytest.approx(8 * (6e-6 + 1073741824 / 16 / 45e9))


def test_send_recv_and_broadcast():
    assert collective_seconds(H100, "send_recv", 1e6, [0, 7]) == pytest.approx(2e-6 + 1e6 / 360e9)
    assert collective_seconds(H100, "send_recv", 1e6, [0, 8]) == pytest.approx(6e-6 + 1e6 / 45e9)
    # pipelined tree broadcast over 8: ceil(log2 8)=3 steps of latency + S/bw
    assert collective_seconds(H100, "broadcast", GiB, range(8)) == pytest.approx(
        3 * 2e-6 + 1073741824 / 360e9
    )


def test_single_gpu_group_is_free_and_size_zero_is_latency_only():
    assert collective_seconds(H100, "all_reduce", GiB, [5]) == 0.0
    assert collective_seconds(H100, "all_gather", 0, range(8)) == pytest.approx(7 * 2e-6)


def test_mesh_axis_placement_changes_cost():
    model = CostModel(hardware=H100)
    tp_inner = MeshPlacement(axes=(("dp", 2), ("tp", 8)))
    tp_outer = MeshPlacement(axes=(("tp", 8), ("dp", 2)))
    assert tp_inner.groups("tp") == [tuple(range(8)), tuple(range(8, 16))]
    assert tp_outer.groups("tp") == [tuple(range(0, 16, 2)), tuple(range(1, 16, 2))]
    inner = model.axis_collective("all_reduce", GiB, tp_inner, "tp")
    outer = model.axis_collective("all_reduce", GiB, tp_outer, "tp")
    assert inner == pytest.approx(2 * 7 * 2e-6 + 2 * (7 / 8) * 1073741824 / 360e9)
    # tp strided over both domains, 4 GPUs in each: the hierarchical number above
    assert outer == pytest.approx(collective_seconds(H100, "all_reduce", GiB, SPLIT))
    assert outer > 1.9 * inner


def test_gb200_nvl72_keeps_72_gpus_on_nvlink():
    gb = PRESETS["gb200-nvl72"]
    bw = 900e9 * 0.8
    assert collective_seconds(gb, "all_reduce", GiB, range(72), "ring") == pytest.approx(
        2 * 71 * 2e-6 + 2 * (71 / 72) * 1073741824 / bw
    )
    # 72 H100s span 9 domains: every step pays InfiniBand latency; 8 NICs per domain striped
    # give min(360e9, 8*45e9) = 360e9; the tree wins: 2*ceil(log2 72)*6e-6 + 2*2^30/360e9
    h100_72 = collective_seconds(H100, "all_reduce", GiB, range(72))
    assert h100_72 == pytest.approx(2 * 7 * 6e-6 + 2 * 1073741824 / 360e9)
    assert collective_seconds(gb, "all_reduce", GiB, range(72)) < h100_72 / 1.9


@pytest.mark.parametrize(
    "kind, nbytes, group, algorithm",
    [
        ("all_scatter", 1, range(2), "auto"),
        ("all_to_all", 1, range(2), "ring"),
        ("all_reduce", -1, range(2), "auto"),
        ("all_reduce", 1, [0, 0], "auto"),
        ("all_reduce", 1, [], "auto"),
        ("send_recv", 1, range(3), "auto"),
        ("all_reduce", 1, [0, 1, 8], "hierarchical"),
    ],
)
def test_bad_requests_raise_input_error(kind, nbytes, group, algorithm):
    with pytest.raises(InputError):
        collective_seconds(H100, kind, nbytes, group, algorithm)


def test_non_uniform_group_auto_uses_flat_ring():
    # 2 GPUs in domain 0, 1 in domain 1: bw min(360e9, 1*45e9); 4 steps of 6e-6
    got = collective_seconds(H100, "all_reduce", GiB, [0, 1, 8])
    ring = 4 * 6e-6 + (4 / 3) * 1073741824 / 45e9
    tree = 2 * 2 * 6e-6 + 2 * 1073741824 / 45e9
    assert got == pytest.approx(min(ring, tree))
