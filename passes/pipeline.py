"""The ordered list of analysis passes run on every captured graph."""

from __future__ import annotations

from ir.graph import Graph
from passes.analyze import AnalyzeCosts
from passes.canonicalize import Canonicalize
from passes.group import GroupRepeated
from passes.manager import PassRunner
from passes.recognize import RecognizeBlocks
from passes.shared_params import CountSharedParams


def analysis_passes() -> list:
    return [Canonicalize(), RecognizeBlocks(), AnalyzeCosts(), GroupRepeated(), CountSharedParams()]


def analyze(graph: Graph, *, skip: frozenset[str] = frozenset()) -> tuple[Graph, PassRunner]:
    runner = PassRunner(analysis_passes(), skip=skip)
    return runner.run(graph), runner
