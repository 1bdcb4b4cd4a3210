"""The trace cache serves an unchanged model and never a stale one."""

from __future__ import annotations

import shutil

from planner.frontend import load_graph
from planner.model_source import resolve_source
from tests.conftest import EXAMPLES


def test_cache_hit_and_invalidation_on_edit(tmp_path, monkeypatch):
    monkeypatch.setenv("HELIXPLAN_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "my_llama.py"
    shutil.copy(EXAMPLES / "llama.py", model)

    first = load_graph(resolve_source(str(model)))
    assert "capture" in first.seconds  # traced
    again = load_graph(resolve_source(str(model)))
    assert "cache_load" in again.seconds and "capture" not in again.seconds
    assert again.graph.param_count == first.graph.param_count

    # Another size argument is another entry.
    wider = load_graph(resolve_source(str(model), {"hidden": "256"}))
    assert "capture" in wider.seconds
    assert wider.graph.param_count != first.graph.param_count

    # Editing the file (here: the default vocabulary) must re-trace, not serve the old graph.
    text = model.read_text()
    assert "vocab_size: int = 512" in text
    model.write_text(text.replace("vocab_size: int = 512", "vocab_size: int = 640"))
    edited = load_graph(resolve_source(str(model)))
    assert "capture" in edited.seconds
    assert edited.graph.block("embedding").dims["vocab"] == 640
