"""Model source -> analyzed IR graph: build on meta, trace, run the analysis passes."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ir.errors import CaptureError, IRVerificationError
from ir.graph import Graph
from planner.model_source import TRACE_BATCH, TRACE_CONTEXT, TRACE_SEQ, ModelSource

if TYPE_CHECKING:
    import torch

    from planner.truncate import Truncation

# torch, torch.export and the tracing passes are imported only when a graph is traced: a
# cache hit loads the pickled IR (polynomials and networkx only: no sympy) and skips ~1 s of
# `import torch`.

log = logging.getLogger(__name__)


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


def _torch_version_bytes() -> bytes:
    """torch's `version.py` (version, git commit, CUDA), read without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return b"no torch"
    version_file = Path(spec.origin).parent / "version.py"
    return version_file.read_bytes() if version_file.is_file() else spec.origin.encode()


@functools.cache
def _code_fingerprint() -> str:
    """Hash of the capture and analysis code: a cached graph from other code is stale."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(_torch_version_bytes())
    for pkg in ("ir", "passes"):
        for f in sorted((root / pkg).rglob("*.py")):
            if "parallelize" in f.parts or "lower" in f.parts:
                continue
            h.update(f.read_bytes())
    for name in ("model_source.py", "hf_model.py", "hf_adapter.py", "truncate.py", "frontend.py"):
        h.update((root / "planner" / name).read_bytes())
    return h.hexdigest()[:16]


def trace_all_layers() -> bool:
    """`HELIXPLAN_TRACE_ALL_LAYERS=1` traces every layer instead of one of each run."""
    return os.environ.get("HELIXPLAN_TRACE_ALL_LAYERS", "").lower() in ("1", "true", "yes", "on")


def _cache_key(source: ModelSource) -> str:
    text = repr(
        (
            source.kind,
            source.content_hash,
            sorted(source.model_args.items()),
            _code_fingerprint(),
            trace_all_layers(),
        )
    )
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
            # the key is the content, not the path: the cached graph may have been traced
            # through another path to the same file, and the program names this one
            graph.meta["source"] = source.to_dict()
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


def load_module_graph(module: torch.nn.Module, example_inputs: dict[str, Any]) -> LoadedModel:
    """Trace an in-memory module (the `planner.plan` API). Not cached: there is no file to
    key on. Every layer is traced."""
    from ir.capture import capture
    from passes.pipeline import analyze

    t0 = time.perf_counter()
    name = type(module).__name__
    source = ModelSource("module", f"<{type(module).__module__}.{name}>", {}, "")
    graph = capture(module, example_inputs, what=f"module {name}", source=source.to_dict())
    t1 = time.perf_counter()
    graph, runner = analyze(graph)
    seconds = {"capture": t1 - t0, "passes": time.perf_counter() - t1}
    seconds.update({f"pass:{t.name}": t.seconds for t in runner.timings})
    return LoadedModel(source=source, graph=graph, seconds=seconds)


def trace_graph(source: ModelSource, *, dedup: bool | None = None) -> LoadedModel:
    """Trace once with symbolic B, T and L (decode-shaped inputs with a KV cache).

    With `dedup` (the default unless `HELIXPLAN_TRACE_ALL_LAYERS` is set), runs of identical
    layers are traced through their first two layers only and the analyzed IR is unrolled to
    full depth (`planner.truncate`, `passes.unroll`): the graph a full trace gives (op names
    aside where export emits extra shape arithmetic in early layers), at the cost of a few
    layers. When the model does not allow it, every layer is traced and the reason logged."""
    from passes.unroll import NotUnrollable
    from planner.model_source import build_model, example_kwargs
    from planner.truncate import Truncation, plan_truncation

    if dedup is None:
        dedup = not trace_all_layers()
    t0 = time.perf_counter()
    model = build_model(source)
    t1 = time.perf_counter()
    kwargs = example_kwargs(
        source, model, workload="decode", batch=TRACE_BATCH, seq=TRACE_SEQ, context=TRACE_CONTEXT
    )
    seconds = {"build": t1 - t0}
    choice = plan_truncation(model) if dedup else "layer dedup is off"
    failed = ""
    if isinstance(choice, Truncation):
        try:
            graph = _trace_truncated(source, model, kwargs, choice, seconds)
            return LoadedModel(source=source, graph=graph, seconds=seconds)
        except (NotUnrollable, CaptureError) as err:
            failed = " ".join(str(err).split())
            seconds = {"build": t1 - t0}
    graph = _trace(source, model, kwargs, seconds)
    if failed:
        log.warning(
            "helixplan: traced all %d layers of %s, since tracing %d of them and unrolling "
            "did not work: %s",
            choice.num_layers, source.display, len(choice.kept), failed,
        )
    else:
        log.debug("helixplan: traced every layer of %s: %s", source.display, choice)
    return LoadedModel(source=source, graph=graph, seconds=seconds)


def _trace(
    source: ModelSource, model: torch.nn.Module, kwargs: dict[str, Any], seconds: dict[str, float]
) -> Graph:
    """Capture and analyze; adds capture, passes and per-pass times to `seconds`."""
    from ir.capture import capture
    from passes.pipeline import analyze
    from planner.hf_adapter import HFAdapter

    t0 = time.perf_counter()
    strip = HFAdapter.prefix if isinstance(model, HFAdapter) else ""
    graph = capture(model, kwargs, what=source.display, strip_prefix=strip, source=source.to_dict())
    t1 = time.perf_counter()
    graph, runner = analyze(graph)
    seconds.update({"capture": t1 - t0, "passes": time.perf_counter() - t1})
    seconds.update({f"pass:{t.name}": t.seconds for t in runner.timings})
    return graph


def _trace_truncated(
    source: ModelSource,
    model: torch.nn.Module,
    kwargs: dict[str, Any],
    truncation: Truncation,
    seconds: dict[str, float],
) -> Graph:
    """Trace the kept layers only, then unroll the analyzed graph to every layer."""
    from passes.manager import PassRunner
    from passes.unroll import UnrollLayers
    from planner.hf_adapter import HFAdapter
    from planner.truncate import truncate_inputs, truncated

    short_kwargs, per_layer = truncate_inputs(kwargs, truncation)
    with truncated(model, truncation):
        graph = _trace(source, model, short_kwargs, seconds)
    container = truncation.container
    if isinstance(model, HFAdapter):
        container = container.removeprefix(HFAdapter.prefix + ".")
    unroll = UnrollLayers(
        container=container,
        num_layers=truncation.num_layers,
        kept=truncation.kept,
        per_layer_inputs=per_layer,
    )
    t0 = time.perf_counter()
    try:
        graph = PassRunner([unroll]).run(graph)
    except IRVerificationError as err:
        raise IRVerificationError(
            f"{err}. This is a helixplan bug; HELIXPLAN_TRACE_ALL_LAYERS=1 traces every layer "
            "instead of unrolling"
        ) from err
    seconds[f"pass:{unroll.name}"] = time.perf_counter() - t0
    seconds["passes"] += seconds[f"pass:{unroll.name}"]
    return graph
