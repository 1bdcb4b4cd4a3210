"""Template contexts: everything `run_plan.py.jinja` prints, prepared as plain data.

The templates only loop over these and print fields; every decision (names, expressions,
comments) is made in `codegen.emit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Line:
    code: str
    comment: str = ""

    @property
    def text(self) -> str:
        return f"{self.code}  # {self.comment}" if self.comment else self.code


@dataclass(frozen=True)
class FunctionContext:
    """One generated function: `def name(signature):` with a docstring and a body."""

    name: str
    signature: str
    doc: tuple[str, ...]
    body: tuple[Line, ...]


@dataclass(frozen=True)
class PlanRow:
    block: str
    kind: str
    strategy: str
    degrees: str
    layouts: str
    function: str


@dataclass(frozen=True)
class ProgramContext:
    title: str
    model_display: str
    model_file: str
    model_file_name: str
    model_args: str
    mesh: str
    mesh_text: str
    axes: str
    world_size: int
    workload: str
    workload_text: str
    plan_rows: tuple[PlanRow, ...]
    plan_table: tuple[str, ...]
    predicted: tuple[str, ...]
    functions: tuple[FunctionContext, ...]
    forward: FunctionContext
    cache_shapes: FunctionContext
    zero_levels: str
    vocab_size: int
    weights: str
    block_weights: str
    inputs: str
    outputs: str
    caches: str
    seed: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
