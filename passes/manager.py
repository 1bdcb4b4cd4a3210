"""The pass runner: one ordered list of named passes, IR verified between them.

A pass is a small frozen dataclass with a `name` and its options as fields, and a
`run(graph) -> graph` method. The runner verifies the IR after each pass, times each pass,
can skip passes by name, and on error says which passes already ran.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from ir.errors import IRVerificationError, PlannerError
from ir.graph import Graph
from ir.verify import verify_graph


class Pass(Protocol):
    name: ClassVar[str]

    def run(self, graph: Graph) -> Graph: ...


@dataclass
class PassTiming:
    name: str
    seconds: float


@dataclass
class PassRunner:
    passes: Sequence[Pass]
    skip: frozenset[str] = frozenset()
    verify: bool = True
    timings: list[PassTiming] = field(default_factory=list)

    def __post_init__(self) -> None:
        known = {p.name for p in self.passes}
        unknown = sorted(set(self.skip) - known)
        if unknown:
            raise PlannerError(
                f"cannot skip unknown pass(es) {unknown}; the passes are {sorted(known)}"
            )

    def run(self, graph: Graph) -> Graph:
        self.timings = []
        done: list[str] = []
        for p in self.passes:
            if p.name in self.skip:
                continue
            t0 = time.perf_counter()
            try:
                graph = p.run(graph)
                if self.verify:
                    verify_graph(graph)
            except IRVerificationError as err:
                raise IRVerificationError(
                    f"IR invalid after pass {p.name!r} (passes run before it: {done or 'none'}): {err}"
                ) from err
            except PlannerError:
                raise
            except Exception as err:
                raise RuntimeError(
                    f"pass {p.name!r} failed (passes run before it: {done or 'none'}): {err}"
                ) from err
            self.timings.append(PassTiming(p.name, time.perf_counter() - t0))
            done.append(p.name)
        return graph
