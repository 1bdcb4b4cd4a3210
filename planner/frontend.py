"""Model source -> analyzed IR graph: build on meta, trace, run the analysis passes."""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import torch

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


def cache_dir() -> Path | None:
    """Where analyzed graphs are kept (`HELIXPLAN_CACHE_DIR`, default ~/.cache/helixplan);
    `HELIXPLAN_CACHE_DIR=off` disables the cache."""
    value = os.environ.get("HELIXPLAN_CACHE_DIR", "")
    if value.lower() in ("off", "0", "none"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "helixplan"


def _code_fingerprint() -> str:
    """Hash of the capture and analysis code: a cached graph from other code is stale."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(torch.__version__.encode())
    for pkg in ("ir", "passes"):
        for f in sorted((root / pkg).rglob("*.py")):
            if "parallelize" in f.parts or "lower" in f.parts:
                continue
            h.update(f.read_bytes())
    mod = root / "planner" / "model_source.py"
    h.update(mod.read_bytes())
    return h.hexdigest()[:16]


def _cache_key(source: ModelSource) -> str:
    text = repr((source.kind, source.content_hash, sorted(source.model_args.items()), _code_fingerprint()))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_graph(source: ModelSource, *, use_cache: bool = True) -> LoadedModel:
    """The analyzed graph of a model, from the trace cache when the model file, its size
    arguments and helixplan's capture/analysis code are unchanged; else traced."""
    directory = cache_dir() if use_cache else None
    path = directory / f"{_cache_key(source)}.pkl" if directory else None
    if path is not None and path.is_file():
        t0 = time.perf_counter()
        try:
            graph = pickle.loads(path.read_bytes())
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            graph = None
        if graph is not None:
            return LoadedModel(source, graph, {"cache_load": time.perf_counter() - t0})
    loaded = trace_graph(source)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(loaded.graph, protocol=pickle.HIGHEST_PROTOCOL))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home only costs the next run a re-trace
    return loaded


def trace_graph(source: ModelSource) -> LoadedModel:
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
