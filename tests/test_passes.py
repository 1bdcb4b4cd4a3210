"""The pass runner: verification between passes, timing, skipping."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import pytest

from ir.errors import IRVerificationError, PlannerError
from ir.graph import Graph, Op
from ir.tensor import B, T, TensorSpec
from passes.canonicalize import Canonicalize
from passes.manager import PassRunner


def _tiny_graph() -> Graph:
    spec = TensorSpec((B, T), "float32")
    ops = [
        Op("a", "relu", ("x",), ("y",)),
        Op("dead", "neg", ("x",), ("z",)),
        Op("c", "clone", ("y",), ("y2",)),
        Op("b", "neg", ("y2",), ("w",)),
    ]
    values = {"x": spec, "y": spec, "z": spec, "y2": spec, "w": spec}
    return Graph(ops=ops, values=values, inputs=["x"], outputs=["w"], params={})


@dataclass(frozen=True)
class BreakIt:
    name: ClassVar[str] = "break-it"

    def run(self, graph: Graph) -> Graph:
        return replace(graph, ops=list(reversed(graph.ops)))


def test_canonicalize_drops_dead_and_identity_ops():
    g = PassRunner([Canonicalize()]).run(_tiny_graph())
    assert [o.name for o in g.ops] == ["a", "b"]
    assert g.op("b").inputs == ("y",)


def test_runner_names_the_failing_pass_and_what_ran():
    runner = PassRunner([Canonicalize(), BreakIt()])
    with pytest.raises(IRVerificationError, match=r"after pass 'break-it'.*canonicalize"):
        runner.run(_tiny_graph())


def test_runner_skips_by_name_and_times_passes():
    runner = PassRunner([Canonicalize(), BreakIt()], skip=frozenset({"break-it"}))
    runner.run(_tiny_graph())
    assert [t.name for t in runner.timings] == ["canonicalize"]
    with pytest.raises(PlannerError, match="unknown pass"):
        PassRunner([Canonicalize()], skip=frozenset({"nope"}))


def test_canonicalize_turns_a_slice_filled_fresh_tensor_into_a_cat():
    """`k = x.new_empty(..); k[..., :2].copy_(a); k[..., 2:].copy_(b)` (transformers'
    DeepSeek-V3 keys): the copies' results are unused, so without the rewrite dead-code
    elimination drops them and leaves `k` unfilled."""
    from ir.graph import ValueRef

    half, whole = TensorSpec((B, T, 2), "float32"), TensorSpec((B, T, 4), "float32")
    ops = [
        Op("a", "relu", ("x",), ("a",)),
        Op("b", "neg", ("x",), ("b",)),
        Op("k", "new_empty", ("a",), ("k",), attrs={"args": (ValueRef("a"), [B, T, 4])}),
        Op("s0", "slice.Tensor", ("k",), ("s0",), attrs={"args": (ValueRef("k"), -1, 0, 2)}),
        Op("c0", "copy_", ("s0", "a"), ("c0",), attrs={"args": (ValueRef("s0"), ValueRef("a"))}),
        Op("s1", "slice.Tensor", ("k",), ("s1",), attrs={"args": (ValueRef("k"), -1, 2, 2**63 - 1)}),
        Op("c1", "copy_", ("s1", "b"), ("c1",), attrs={"args": (ValueRef("s1"), ValueRef("b"))}),
        Op("out", "neg", ("k",), ("w",)),
    ]
    values = {"x": half, "a": half, "b": half, "k": whole, "s0": half, "c0": half, "s1": half,
              "c1": half, "w": whole}
    g = PassRunner([Canonicalize()]).run(Graph(ops=ops, values=values, inputs=["x"], outputs=["w"], params={}))
    assert [o.target for o in g.ops] == ["relu", "neg", "cat", "neg"]
    cat = g.op("k")
    assert cat.outputs == ("k",) and cat.attrs["args"] == ([ValueRef("a"), ValueRef("b")], 2)
    # a fill that leaves a gap is not a cat: the tensor is left as traced
    gap = [replace(o, attrs={"args": (ValueRef("k"), -1, 3, 2**63 - 1)}) if o.name == "s1" else o for o in ops]
    from passes.canonicalize import _fills_as_cat

    kept = _fills_as_cat(Graph(ops=gap, values=values, inputs=["x"], outputs=["w"], params={}))
    assert [o.target for o in kept] == [o.target for o in gap]
