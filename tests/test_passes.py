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


def test_lowering_simplified_matches_sympy_simplify():
    """`simplified` skips sympy.simplify for monomials (it would import sympy.physics); the
    result must be the very expression simplify gives, monomial or not."""
    import sympy

    from ir.tensor import L
    from passes.lower.builder import _is_monomial, simplified

    cases = [B / 2, 3 * B * T / L, B**2 / (4 * T), sympy.Integer(6) / 4, B, (B + 2) / 2,
             B * (T + 1) / T, (B * T + B) / (T + 1)]
    assert [_is_monomial(e) for e in cases] == [True, True, True, True, True, False, False, False]
    for e in cases:
        assert simplified(e) == sympy.simplify(e)
    assert simplified(B * (T + 1) / T) != B * (T + 1) / T  # the non-monomial is simplified
