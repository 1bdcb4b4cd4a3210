"""Model source -> analyzed IR graph: build on meta, trace, run the analysis passes."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ir.capture import capture
from ir.graph import Graph
from passes.pipeline import analyze
from planner.model_source import (
    TRACE_BATCH,
    TRACE_CONTEXT,
    TRACE_SEQ,
    HFAdapter,
    ModelSource,
    build_model,
    example_kwargs,
)


@dataclass(frozen=True)
class LoadedModel:
    source: ModelSource
    graph: Graph
    seconds: dict[str, float]


def load_graph(source: ModelSource) -> LoadedModel:
    """Trace once with symbolic B, T and L (decode-shaped inputs with a KV cache for model
    files; prefill-shaped for hf: models, whose attention then attends over T + L)."""
    t0 = time.perf_counter()
    model = build_model(source)
    t1 = time.perf_counter()
    context = 0 if source.kind == "hf" else TRACE_CONTEXT
    kwargs = example_kwargs(
        source, model, workload="decode", batch=TRACE_BATCH, seq=TRACE_SEQ, context=context
    )
    strip = HFAdapter.prefix if isinstance(model, HFAdapter) else ""
    graph = capture(model, kwargs, what=source.display, strip_prefix=strip, source=source.to_dict())
    t2 = time.perf_counter()
    graph, runner = analyze(graph)
    t3 = time.perf_counter()
    seconds = {"build": t1 - t0, "capture": t2 - t1, "passes": t3 - t2}
    seconds.update({f"pass:{t.name}": t.seconds for t in runner.timings})
    return LoadedModel(source=source, graph=graph, seconds=seconds)
