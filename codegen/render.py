"""Render `run_plan.py` from the templates (importlib.resources, StrictUndefined)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

from codegen.context import ProgramContext

TEMPLATE = "run_plan.py.jinja"


def _load(name: str) -> str:
    return resources.files("codegen").joinpath("templates", name).read_text()


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_load),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_program(context: ProgramContext) -> str:
    text = environment().get_template(TEMPLATE).render(p=context)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def write_program(context: ProgramContext, directory: str | Path) -> Path:
    path = Path(directory) / "run_plan.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_program(context))
    return path
