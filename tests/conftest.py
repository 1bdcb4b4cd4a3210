from __future__ import annotations

import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HF_CONFIGS = ROOT / "tests" / "configs" / "hf"
FIXTURES = ROOT / "tests" / "fixtures"


@functools.cache
def loaded(spec: str, **model_args: str):
    """Trace a model once per test session (capture dominates test time)."""
    from planner.frontend import load_graph
    from planner.model_source import resolve_source

    return load_graph(resolve_source(spec, dict(model_args)))


@pytest.fixture
def load():
    return loaded


@pytest.fixture(autouse=True, scope="session")
def _isolated_trace_cache(tmp_path_factory):
    """Tests use their own trace cache, so a stale user cache cannot hide a bug."""
    import os

    os.environ["HELIXPLAN_CACHE_DIR"] = str(tmp_path_factory.mktemp("trace-cache"))
