"""The planner prices level 3 as the generated program runs it: a level-3 block's
all-gathers start when the level-3 block before it starts, so they hide behind that block's
compute (forward; the reverse in backward), an edge cost between consecutive blocks; and
the workspace holds two gathered blocks and the gradient buckets of levels 2-3. Numbers
below are derived by hand."""

from __future__ import annotations

import itertools
import re

import pytest

from ir.mesh import Mesh
from ir.workload import Workload
from passes.parallelize.ilp import BlockVars, Option, Problem, plan_time_s, solve
from passes.parallelize.prefetch import PrefetchCosts
from passes.parallelize.pricing import Priced
from passes.parallelize.search import workspace_bytes
from passes.parallelize.training import (
    GRAD_BUCKET_BYTES,
    GRAD_BUCKETS_HELD,
    BlockPass,
    prefetch_exposed_s,
)
from tests.conftest import EXAMPLES, ROOT


def test_exposed_gather_is_what_the_neighbour_does_not_hide():
    # (spare compute: what the block's own collectives leave of its forward / backward)
    # earlier block at level 3 (forward 2 s): the later one's 3 s of forward gathers show 1 s;
    # the later block at level 3 (backward 2.5 s) hides the earlier one's 1 s backward gathers
    before, after = BlockPass(2.0, 0.2, (1.0, 1.0)), BlockPass(0.5, 2.5, (3.0, 3.0))
    assert prefetch_exposed_s(before, after) == pytest.approx(1.0)
    # ... a 0.5 s backward hides only half of them
    assert prefetch_exposed_s(before, after._replace(spare_backward_s=0.5)) == pytest.approx(1.5)
    # earlier block not at level 3: an earlier level-3 block started the gathers, hidden
    # behind both blocks' forward (2 + 0.5 of 3 s)
    assert prefetch_exposed_s(before._replace(gathers=(0.0, 0.0)), after) == pytest.approx(0.5)
    # later block not at level 3: both blocks' backward (0.2 + 0.5) hide the earlier one's
    # 1 s of backward gathers but 0.3 s
    assert prefetch_exposed_s(before, BlockPass(0.5, 0.5, (0.0, 0.0))) == pytest.approx(0.3)


def _priced(time_s, spare_forward_s=0.0, spare_backward_s=0.0, gathers=(0.0, 0.0)):
    return Priced(time_s, time_s, spare_forward_s=spare_forward_s, spare_backward_s=spare_backward_s,
                  prefetch_s=gathers)


# E (an embedding, level 3 only), N (a norm), M (an MLP): N and M at level 0 or 3; the
# seconds given are each option's time, spare forward and backward compute, gathers.
PRICES = {
    "E": {"z3": _priced(2.0, 0.5, 1.0, (0.3, 0.3))},
    "N": {"z0": _priced(0.2, 0.05, 0.15), "z3": _priced(0.2, 0.05, 0.15, (0.01, 0.01))},
    "M": {"z0": _priced(10.5, 3.0, 7.0), "z3": _priced(10.0, 3.0, 7.0, (2.0, 2.0))},
}
# By hand: E's forward gathers are not prefetched (0.3). Pair E->N: E at level 3, N's 0.01
# hide behind E's 0.5; N at level 3 hides only 0.15 of E's 0.3 backward gathers (0.15), N at
# level 0 leaves them to N's and E's backward (1.15, hidden). Pair N->M: N at level 3 starts
# M's 2.0 of gathers and hides 0.05 (1.95); N at level 0 -> an earlier block started them,
# hidden behind N's and M's forward (3.05); M at level 3 hides N's 0.01 behind its 7.0.
EXPECTED = {
    ("z0", "z0"): 2.0 + 0.2 + 10.5 + 0.3,
    ("z0", "z3"): 2.0 + 0.2 + 10.0 + 0.3,
    ("z3", "z0"): 2.0 + 0.2 + 10.5 + 0.3 + 0.15,
    ("z3", "z3"): 2.0 + 0.2 + 10.0 + 0.3 + 0.15 + 1.95,
}


def test_prefetch_edges_price_the_chain_by_hand_and_the_ilp_takes_the_cheapest():
    options = {
        name: tuple(Option(name=o, time_s=p.time_s, memory_bytes=0.0, layout_in="replicate",
                           layout_out="replicate") for o, p in by.items())
        for name, by in PRICES.items()
    }
    costs = PrefetchCosts.between([("E", "N", 1), ("N", "M", 1)], options, PRICES, ("E",))
    blocks = [BlockVars(name=n, group=n, options=options[n]) for n in ("E", "N", "M")]
    blocks, edges = costs.apply(blocks, [])
    problem = Problem(blocks=tuple(blocks), edges=tuple(edges), memory_capacity_bytes=1.0)
    for (n, m), want in EXPECTED.items():
        assignment = {"E": "z3", "N": n, "M": m}
        assert plan_time_s(problem, assignment) == pytest.approx(want)
        blocks_only = 2.0 + 0.2 + (10.5 if m == "z0" else 10.0)
        assert costs.seconds(assignment) == pytest.approx(want - blocks_only)
    best = solve(problem, top_k=1)
    assert best.assignment == {"E": "z3", "N": "z0", "M": "z3"}
    assert best.objective_s == pytest.approx(12.5)


def test_workspace_counts_two_gathered_blocks_and_the_gradient_buckets(load):
    """examples/llama.py (vocab 512, hidden 128, 2 layers; heads 4 of 32, 2 KV heads, FFN
    256): embedding and head 65,536 parameters each, attention 128·128·2 + 64·128·2 =
    49,152, MLP 3·256·128 = 98,304 (the largest block), norms 128 (five): 426,624 in all.
    In bf16 on dp = 2: level 3 adds two MLPs' gathered weights, 2·98,304·2 B = 393,216 B;
    levels 2-3 add the buckets, at most all gradients (853,248 B < 3 × 25 MiB)."""
    graph = load(str(EXAMPLES / "llama.py")).graph
    assert sum(b.param_count for b in graph.blocks) == 426_624
    mesh = Mesh.of(dp=2)

    def extra(levels, mesh=mesh):
        wl = Workload(kind="train", batch=8, seq=64, zero_levels=levels)
        return workspace_bytes(graph, wl, mesh, 2.0, 0.0) - workspace_bytes(
            graph, Workload(kind="train", batch=8, seq=64, zero_levels=(0, 1)), mesh, 2.0, 0.0)

    assert extra((0, 1, 2)) == 853_248
    assert extra((0, 1, 2, 3)) == 853_248 + 393_216
    # split over tp = 2 both halve
    assert extra((0, 1, 2, 3), Mesh.of(dp=2, tp=2)) == (853_248 + 393_216) / 2


def test_bucket_constants_are_the_programs():
    """The planner's bucket size and count are the generated program's default --bucket-mb
    and its reduce-scatters in flight plus the bucket being filled."""
    templates = ROOT / "codegen" / "templates"
    main = (templates / "_main.py.jinja").read_text()
    train = (templates / "_train.py.jinja").read_text()
    mb = float(re.search(r'"--bucket-mb", type=float, default=([0-9.]+)', main).group(1))
    in_flight = int(re.search(r"^SCATTER_IN_FLIGHT = (\d+)$", train, re.M).group(1))
    assert GRAD_BUCKET_BYTES == mb * 2**20
    assert GRAD_BUCKETS_HELD == in_flight + 1


def test_a_pair_of_groups_met_n_times_costs_n_times():
    """Between two blocks sharing their option lists (a group), the cost table is the same
    object's numbers, scaled by how often the pair occurs (compact groups)."""
    options = {n: tuple(Option(name=o, time_s=1.0, memory_bytes=0.0, layout_in="r", layout_out="r")
                        for o in PRICES[n]) for n in ("N", "M")}
    once = PrefetchCosts.between([("N", "M", 1)], options, PRICES, ("N",))
    thrice = PrefetchCosts.between([("N", "M", 3)], options, PRICES, ("N",))
    for pair in itertools.product(PRICES["N"], PRICES["M"]):
        assert thrice.pairs.get(("N", "M"), {}).get(pair, 0.0) == pytest.approx(
            3 * once.pairs.get(("N", "M"), {}).get(pair, 0.0))
    assert once.pairs[("N", "M")][("z3", "z3")] == pytest.approx(1.95)
