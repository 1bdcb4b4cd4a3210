"""Exposed communication under the stage and slice schedules."""

import pytest

from cost_models import OverlapStage, batch_sliced_overlap, exposed_comm_seconds, sliced_overlap
from ir.errors import InputError


def test_stages_expose_only_the_unhidden_part():
    stages = [
        OverlapStage(comm_s=10.0, overlappable_compute_s=4.0),  # 6 exposed
        OverlapStage(comm_s=3.0, overlappable_compute_s=5.0),  # fully hidden
        OverlapStage(comm_s=2.0),  # nothing to hide behind: 2
    ]
    assert exposed_comm_seconds(stages) == pytest.approx(8.0)
    assert exposed_comm_seconds([]) == 0.0


def test_slices_comm_bound():
    # 4 slices, compute 1, comm 2 each: comm i ends at 1 + 2(i+1); total 1 + 8 = 9
    t = sliced_overlap([1.0] * 4, [2.0] * 4)
    assert t.total_s == pytest.approx(9.0)
    assert t.exposed_comm_s == pytest.approx(5.0)


def test_slices_compute_bound_expose_the_last_comm():
    t = batch_sliced_overlap(compute_total_s=8.0, comm_total_s=4.0, slices=4)
    # compute 2, comm 1 per slice: total 4*2 + 1 = 9; exposed = last slice's comm
    assert t.total_s == pytest.approx(9.0)
    assert t.exposed_comm_s == pytest.approx(1.0)
    # one slice: nothing overlaps
    assert batch_sliced_overlap(8.0, 4.0, 1).exposed_comm_s == pytest.approx(4.0)


def test_uneven_slices():
    # compute ends 3, 4, 9; comm ends 3+4=7, max(4,7)+1=8, max(9,8)+2=11
    t = sliced_overlap([3.0, 1.0, 5.0], [4.0, 1.0, 2.0])
    assert t.total_s == pytest.approx(11.0)
    assert t.exposed_comm_s == pytest.approx(2.0)


def test_overlap_errors():
    with pytest.raises(InputError):
        OverlapStage(comm_s=-1.0)
    with pytest.raises(InputError):
        sliced_overlap([1.0], [1.0, 2.0])
    with pytest.raises(InputError):
        batch_sliced_overlap(1.0, 1.0, 0)
