"""Level-3 prefetch in the generated training program: while a block runs, the all-gathers
of the next level-3 block's weights (forward order in forward, the reverse in backward) are
under way, each waited for where a block reads the weight; the program holds the gathered
weights of two blocks at most.

What would go wrong and which test sees it: a gathered weight read before its all-gather is
done (the deferred-gather runs, where an async all-gather's result lands only at `.wait()`);
the wrong block prefetched (the gather counts: a prefetch nobody reads, reads that find no
prefetch); more than two blocks held (peak gathered bytes). The ranks run as threads
(threaded process group)."""

from __future__ import annotations

import importlib.util
import re

import torch

from planner.verify_runner import run_ranks_threaded, write_run_plan
from tests.conftest import ROOT
from tests.test_codegen import REPLICATE, make_plan
from tests.test_codegen_train import F64, TRAIN, assert_exact, train_run

ARGV = ["--verify", "--backend", "gloo", "--workload", "train", "--batch", "4", "--seq", "8",
        "--steps", "3", "--zero", "3", *F64]
FLOAT64 = 8


class _Landing:
    """An async all-gather whose result is copied into its output only when waited for."""

    def __init__(self, out, result):
        self.out, self.result = out, result

    def wait(self):
        self.out.copy_(self.result)
        return True


class DeferredGathers:
    """torch.distributed, except that an async all_gather_into_tensor leaves NaN in its
    output until `.wait()`: a program that reads a gathered weight before waiting computes
    with NaN, whatever the timing of the real collective."""

    def __init__(self, dist):
        self._dist = dist

    def __getattr__(self, name):
        return getattr(self._dist, name)

    def all_gather_into_tensor(self, out, t, group=None, async_op=False):
        if not async_op:
            return self._dist.all_gather_into_tensor(out, t, group=group)
        result = torch.empty_like(out)
        self._dist.all_gather_into_tensor(result, t, group=group)
        out.fill_(float("nan"))
        return _Landing(out, result)


def run_deferred(program, nproc, argv):
    """`run_threaded` with the program's async all-gathers deferred (DeferredGathers)."""
    spec = importlib.util.spec_from_file_location(f"helixplan_deferred_{abs(hash(str(program)))}", program)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.dist = DeferredGathers(module.dist)
    args = module.parse_args(argv)
    return run_ranks_threaded(nproc, lambda rank: module.run(args, print_result=False))


def gathered_block_bytes(graph):
    """Per block with weights, in forward order: bytes of its weights all-gathered, float64
    (every weight of examples/llama.py splits evenly over dp = 2: no padding)."""
    return [b.param_count * FLOAT64 for b in graph.blocks if b.param_count]


def test_prefetch_holds_two_blocks_and_every_read_but_the_first_was_prefetched(load, tmp_path):
    """dp2 at level 3, every block's weights gathered: with prefetch the peak of gathered
    bytes is at most two adjacent blocks' (and more than the largest block alone, since the
    next block is gathered while the largest runs); only the first forward block's gathers
    start on demand, none is dropped unread, and the backward of the last block reuses its
    forward's gathers, so fewer all-gathers run than without prefetch (--no-overlap: each
    read gathers on demand, one block whole at a time). Both are exact."""
    graph = load(str(ROOT / "examples" / "llama.py")).graph
    sizes = gathered_block_bytes(graph)
    two_blocks = max(a + b for a, b in zip(sizes, sizes[1:], strict=False))
    _, pre = train_run(load, tmp_path / "pre", "llama", {"dp": 2}, REPLICATE, ["--zero", "3", *F64])
    _, seq = train_run(load, tmp_path / "seq", "llama", {"dp": 2}, REPLICATE, ["--zero", "3", "--no-overlap", *F64])
    assert_exact(pre, tol=1e-9)
    assert_exact(seq, tol=1e-9)
    first_block_weights = len(graph.blocks[0].params)
    for p, s in zip(pre, seq, strict=True):
        assert max(sizes) < p["peak_gathered_bytes"] <= two_blocks
        assert s["peak_gathered_bytes"] <= max(sizes)
        assert p["level3_gathers_on_demand"] == 3 * first_block_weights  # one per step
        assert p["level3_gathers_unread"] == 0
        assert s["level3_gathers_on_demand"] == s["level3_gathers"] > p["level3_gathers"]
        assert s["level3_gathers_unread"] == 0


def test_prefetched_gathers_are_waited_for_before_a_read(load, tmp_path):
    """Async all-gathers whose data lands only at `.wait()` (DeferredGathers): the program is
    exact with prefetch, recomputed blocks (their gathers run again inside backward) and
    small buckets (reduce-scatters in flight beside the gathers); with the wait before a read
    removed, the planted program reads NaN and the comparison fails."""
    graph = load(str(ROOT / "examples" / "llama.py")).graph
    import dataclasses

    plan = make_plan(graph, {"dp": 2}, REPLICATE, TRAIN)
    plan = dataclasses.replace(plan, blocks=[
        dataclasses.replace(b, extras={"zero": 3, "recompute": int(b.kind == "attention")})
        for b in plan.blocks
    ])
    program = write_run_plan(graph, plan, tmp_path)
    results = run_deferred(program, 2, [*ARGV, "--bucket-mb", "0.05"])
    assert_exact(results, tol=1e-9)
    assert results[0]["level3_gathers_unread"] == 0

    text = program.read_text()
    planted, count = re.subn(r"gather\.read = True\n        return gather\.wait\(\)",
                             "gather.read = True\n        return gather.full", text)
    assert count == 1
    program.write_text(planted)
    bad = run_deferred(program, 2, ARGV)
    assert bad[0]["ok"] is False


def test_planted_wrong_prefetch_order_is_seen_in_the_gather_counts(load, tmp_path):
    """Prefetch the block after next in forward, and the block after (not before) in
    backward: the results stay exact (a read that finds no prefetch gathers on demand), but
    the counts show it — prefetches dropped unread and reads gathered on demand — where the
    right order has none beyond the first block's."""
    graph = load(str(ROOT / "examples" / "llama.py")).graph
    program = write_run_plan(graph, make_plan(graph, {"dp": 2}, REPLICATE, TRAIN), tmp_path)
    text = program.read_text()
    planted = text.replace("return self.order[i + 1] if i + 1 < len(self.order) else None",
                           "return self.order[i + 2] if i + 2 < len(self.order) else None")
    planted = planted.replace("for b in reversed(self.order[:i]) if self.reread.get(b)",
                              "for b in self.order[i + 1:] if self.reread.get(b)")
    assert planted.count("self.order[i + 2]") == 1 and planted.count("self.order[i + 1:]") == 1
    program.write_text(planted)
    results = run_deferred(program, 2, ARGV)
    assert_exact(results, tol=1e-9)
    first_block_weights = len(graph.blocks[0].params)
    r0 = results[0]
    assert r0["level3_gathers_unread"] > 0
    assert r0["level3_gathers_on_demand"] > 3 * first_block_weights
