"""Codegen: a per-rank program (passes/lower) -> a runnable torch.distributed `run_plan.py`.

`generate(program, plan, out_dir)` builds the template context and writes
`out_dir/run_plan.py`; the planner composes it with lowering:
`generate(passes.lower.lower(graph, plan), plan, out_dir)`. The pieces: `codegen.build`
(program -> context), `codegen.emit` (steps -> Python lines), `codegen.render` (jinja2
templates in codegen/templates).

Codegen reads the per-rank program's data types (ir/rank_program.py, which imports only
`ir/`) and `ir/`; it runs no pass itself.
"""

from __future__ import annotations

from pathlib import Path

from codegen.build import build_context
from codegen.render import render_program, write_program
from ir.plan import Plan
from ir.rank_program import RankProgram


def generate(
    program: RankProgram, plan: Plan, out_dir: str | Path, *, model_file: str | None = None,
    bytecode_dir: str | Path | None = None,
) -> Path:
    """Write `out_dir/run_plan.py` for a lowered, scheduled `program`; returns its path.
    `model_file` is the file the program builds the model with (default: the traced one);
    `bytecode_dir` keeps the compiled templates across runs."""
    source = program.meta.get("source") or {}
    context = build_context(program, plan, model_file=model_file or str(source.get("path", "model.py")))
    return write_program(context, out_dir, bytecode_dir=bytecode_dir)


__all__ = ["build_context", "generate", "render_program", "write_program"]
