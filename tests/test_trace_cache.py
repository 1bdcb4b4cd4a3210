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


def test_a_cache_hit_names_the_path_it_was_asked_for(tmp_path, monkeypatch):
    """The cache is keyed by content: the same file reached by another path (a copy, a
    relative path) is a hit, and the graph — which the program's header and model import
    read — must name the path given now, not the one it was first traced through."""
    monkeypatch.setenv("HELIXPLAN_CACHE_DIR", str(tmp_path / "cache"))
    first, second = tmp_path / "a" / "model.py", tmp_path / "b" / "model.py"
    for path in (first, second):
        path.parent.mkdir()
        shutil.copy(EXAMPLES / "llama.py", path)
    assert load_graph(resolve_source(str(first))).graph.meta["source"]["path"] == str(first)
    again = load_graph(resolve_source(str(second)))
    assert "cache_load" in again.seconds
    assert again.graph.meta["source"]["path"] == str(second)


def test_cache_key_covers_local_modules_the_model_imports(tmp_path):
    """A model file that imports a module beside it: editing that module changes the key;
    editing an unrelated file in the folder does not."""
    model = tmp_path / "my_model.py"
    model.write_text("import my_sizes\nfrom pkg import layers\nimport torch\n")
    (tmp_path / "my_sizes.py").write_text("VOCAB = 512\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "layers.py").write_text("from .blocks import Block\n")
    (tmp_path / "pkg" / "blocks.py").write_text("class Block: pass\n")
    (tmp_path / "unrelated.py").write_text("x = 1\n")

    first = resolve_source(str(model)).content_hash
    (tmp_path / "unrelated.py").write_text("x = 2\n")
    assert resolve_source(str(model)).content_hash == first
    (tmp_path / "my_sizes.py").write_text("VOCAB = 640\n")
    second = resolve_source(str(model)).content_hash
    assert second != first
    (tmp_path / "pkg" / "blocks.py").write_text("class Block:\n    size = 2\n")  # imported via pkg.layers
    assert resolve_source(str(model)).content_hash != second


def _cache_env(tmp_path) -> dict:
    import os

    return dict(os.environ, HELIXPLAN_CACHE_DIR=str(tmp_path / "cache"))


def _warm_plan_modules(tmp_path, args: list[str], modules_expr: str) -> str:
    """Run `helixplan ARGS` cold (filling a trace cache under tmp_path), then again in a fresh
    interpreter and return what `modules_expr` (over `sys.modules`) prints after it."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = _cache_env(tmp_path)
    cold = subprocess.run([sys.executable, "-m", "planner", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert cold.returncode == 0, cold.stderr
    probe = f"import sys\nfrom planner.cli import main\nassert main({args!r}) == 0\nprint({modules_expr})\n"
    warm = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert warm.returncode == 0, warm.stderr
    return warm.stdout.strip().splitlines()[-1]


def test_warm_plan_does_not_import_torch(tmp_path):
    """With the trace cached, `helixplan plan` (plan.json, report.md and run_plan.py) runs
    without importing torch or sympy: the cached IR holds polynomials (ir/polynomial.py),
    and lowering and codegen compute with them. The MoE model's
    router ops (topk, scatter, sum.dim_IntList) are written as `torch.ops.aten.*` from the
    namespaces capture recorded; CP-SAT runs without `cp_model`'s pandas, and its model is
    written without the numpy that `CpBaseModel` imports; a preset hardware reads no YAML."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    args = ["plan", str(EXAMPLES / "mixtral.py"), "--gpus", "2", "--out", str(tmp_path / "out")]
    loaded = _warm_plan_modules(
        tmp_path, args, "[m for m in ('torch', 'networkx', 'pandas', 'sympy', 'numpy', 'yaml') if m in sys.modules]"
    )
    assert loaded == "[]"
    env = _cache_env(tmp_path)
    assert "torch.ops.aten.topk.default" in (tmp_path / "out" / "run_plan.py").read_text()

    # --no-program: the same plan, no lowering or code generation.
    lean = tmp_path / "lean"
    r = subprocess.run([sys.executable, "-m", "planner", *args[:-1], str(lean), "--no-program"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in lean.iterdir()) == ["plan.json", "report.md"]
    assert (lean / "plan.json").read_text() == (tmp_path / "out" / "plan.json").read_text()


def test_warm_helix_latent_plan_does_not_import_sympy(tmp_path):
    """The lowering paths with most size arithmetic (Helix over latent attention: batch slices,
    KV split, the absorbed MLA kernel) run from a cached graph without sympy: sizes are
    ir.polynomial polynomials from the cache on."""
    args = ["plan", str(EXAMPLES / "deepseek.py"), "--gpus", "4", "--workload", "decode",
            "--context", "4k", "--force", "layers.*.attention=helix", "--out", str(tmp_path / "out")]
    loaded = _warm_plan_modules(tmp_path, args, "sorted(m for m in sys.modules if m.split('.')[0] == 'sympy')")
    assert loaded == "[]"
    assert "mla_helix_partial" in (tmp_path / "out" / "run_plan.py").read_text()


def test_compiled_templates_are_cached_across_runs(tmp_path, monkeypatch):
    """With a bytecode directory the templates compile once; a later run (a new jinja2
    environment) renders from the cache without compiling, to the same text."""
    import jinja2

    from codegen.build import build_context
    from codegen.render import render_program
    from passes.lower import lower
    from tests.conftest import loaded
    from tests.test_codegen import DECODE, make_plan

    graph = loaded(str(EXAMPLES / "llama.py")).graph
    plan = make_plan(graph, {"tp": 2}, {"attention": "tp", "mlp": "tp"}, DECODE)
    context = build_context(lower(graph, plan), plan, model_file=str(EXAMPLES / "llama.py"))
    compiled: list[str] = []
    original = jinja2.Environment.compile

    def counting(self, source, name=None, filename=None, raw=False, defer_init=False):
        compiled.append(name)
        return original(self, source, name, filename, raw, defer_init)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    plain = render_program(context)
    assert "run_plan.py.jinja" in compiled
    compiled.clear()
    first = render_program(context, bytecode_dir=tmp_path / "templates")
    assert compiled and any((tmp_path / "templates").iterdir())
    compiled.clear()
    again = render_program(context, bytecode_dir=tmp_path / "templates")
    assert compiled == []
    assert plain == first == again
