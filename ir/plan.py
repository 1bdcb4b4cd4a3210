"""The plan as data: what passes and codegen read, what `plan.json` stores.

A `Plan` names, per block, the chosen strategy, its mesh-axis degrees and extra parameters,
and the activation layouts it consumes and produces; plus the mesh, the workload, the
hardware spec, predictions and the solver's account. It holds no wall-clock times, so the
same input gives byte-identical JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ir.errors import InputError

SCHEMA_VERSION = 1
_JSON_ORDER = (
    "schema_version", "model", "hardware", "workload", "mesh", "rank_map", "blocks",
    "predicted", "memory", "solver", "alternatives", "excluded",
)


@dataclass(frozen=True)
class BlockPlan:
    name: str
    kind: str
    group: str
    strategy: str
    degrees: dict[str, int] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    layout_in: str = "replicate"
    layout_out: str = "replicate"
    dims: dict[str, int] = field(default_factory=dict)
    predicted_s: float = 0.0
    compute_s: float = 0.0
    comm_s: dict[str, float] = field(default_factory=dict)
    memory_bytes: float = 0.0


@dataclass(frozen=True)
class Plan:
    model: dict[str, Any]
    hardware: dict[str, Any]
    workload: dict[str, Any]
    mesh: dict[str, int]
    rank_map: list[dict[str, Any]]
    blocks: list[BlockPlan]
    predicted: dict[str, Any]
    memory: dict[str, Any]
    solver: dict[str, Any]
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def block(self, name: str) -> BlockPlan:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def world_size(self) -> int:
        n = 1
        for s in self.mesh.values():
            n *= s
        return n

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in _JSON_ORDER}

    def to_json(self) -> str:
        # _round_floats copies while it rounds, so the fields go in as they are (no asdict
        # deep copy first); nested dataclasses become dicts as asdict makes them.
        fields_ = {k: getattr(self, k) for k in _JSON_ORDER}
        return json.dumps(_round_floats(fields_), indent=1, sort_keys=False) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Plan:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise InputError(
                f"plan schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}; "
                "re-run `helixplan plan` with this version of helixplan"
            )
        blocks = [BlockPlan(**b) for b in d["blocks"]]
        rest = {k: v for k, v in d.items() if k != "blocks"}
        # JSON has no tuples: give the workload's sequences back the tuple form a fresh plan
        # carries, so a loaded plan renders the same program text as the plan it was saved from.
        rest["workload"] = {k: tuple(v) if isinstance(v, list) else v for k, v in d["workload"].items()}
        return Plan(blocks=blocks, **rest)

    @staticmethod
    def from_json(text: str) -> Plan:
        return Plan.from_dict(json.loads(text))

    @staticmethod
    def load(path: str | Path) -> Plan:
        p = Path(path)
        if p.is_dir():
            p = p / "plan.json"
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise InputError(f"plan file {str(p)!r} does not exist; run `helixplan plan ... --out DIR` first") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"plan file {str(p)!r} is not valid JSON: {exc}") from None
        return Plan.from_dict(data)


def _round_floats(x: Any, digits: int = 12) -> Any:
    """Stable text: floats rounded to 12 significant digits."""
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {k: _round_floats(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round_floats(v, digits) for v in x]
    if is_dataclass(x) and not isinstance(x, type):
        return {f.name: _round_floats(getattr(x, f.name), digits) for f in fields(x)}
    return x
