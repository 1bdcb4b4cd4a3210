"""Measured kernel records: their format, the cost model's prediction for each, and the
predicted-vs-measured check.

A record file is a JSON list of objects, one per measured kernel (`seconds` is the median time
of one launch, measured back to back):

    {"kind": "gemm", "m", "k", "n", "dtype", "seconds"}
    {"kind": "attention_decode", "batch", "q_heads", "kv_heads", "kv_len", "head_dim", "dtype",
     "seconds"}                                         (optional: "q_len", default 1)
    {"kind": "attention_prefill", "batch", "q_heads", "kv_heads", "seq", "head_dim", "causal",
     "dtype", "seconds"}                                (optional: "cached", default 0)
    {"kind": "memcpy", "nbytes", "seconds"}             (nbytes = bytes read + bytes written)
    {"kind": "all_reduce", "gpus", "nbytes", "seconds"} (GPUs 0..gpus-1 of one domain)

Any record may carry a "device" string. A calibrated profile (a JSON object whose
`calibration.records` holds such a list) is accepted wherever a record file is.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cost_models.comm import collective_seconds
from cost_models.compute import (
    KernelWork,
    attention_decode_work,
    attention_prefill_work,
    gemm_work,
    kernel_seconds,
)
from cost_models.hardware import HardwareSpec
from ir.errors import InputError

Record = dict[str, Any]

_INT, _STR, _BOOL = "int", "str", "bool"
RECORD_FIELDS: dict[str, dict[str, str]] = {
    "gemm": {"m": _INT, "k": _INT, "n": _INT, "dtype": _STR},
    "attention_decode": {
        "batch": _INT, "q_heads": _INT, "kv_heads": _INT, "kv_len": _INT, "head_dim": _INT,
        "dtype": _STR,
    },
    "attention_prefill": {
        "batch": _INT, "q_heads": _INT, "kv_heads": _INT, "seq": _INT, "head_dim": _INT,
        "causal": _BOOL, "dtype": _STR,
    },
    "memcpy": {"nbytes": _INT},
    "all_reduce": {"gpus": _INT, "nbytes": _INT},
}
_OPTIONAL_FIELDS: dict[str, dict[str, str]] = {
    "attention_decode": {"q_len": _INT},
    "attention_prefill": {"cached": _INT},
}
RECORD_KINDS: tuple[str, ...] = tuple(RECORD_FIELDS)


def _type_ok(value: Any, expected: str) -> bool:
    if expected == _BOOL:
        return isinstance(value, bool)
    if expected == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def validate_record(record: Any, index: int = 0) -> Record:
    """Check one record's kind, fields and types; return it unchanged."""
    where = f"record {index}"
    if not isinstance(record, Mapping):
        raise InputError(f"{where} is {record!r}; needed a JSON object with a `kind` field")
    kind = record.get("kind")
    if kind not in RECORD_FIELDS:
        raise InputError(
            f"{where} has kind {kind!r}; known kinds are {', '.join(RECORD_KINDS)}"
        )
    needed = {**RECORD_FIELDS[kind], "seconds": "number"}
    optional = {**_OPTIONAL_FIELDS.get(kind, {}), "device": _STR}
    missing = [name for name in needed if name not in record]
    if missing:
        raise InputError(
            f"{where} ({kind}) lacks field(s) {missing}; a {kind} record needs "
            f"{['kind', *needed]}"
        )
    unknown = sorted(set(record) - set(needed) - set(optional) - {"kind"})
    if unknown:
        raise InputError(
            f"{where} ({kind}) has unknown field(s) {unknown}; allowed are "
            f"{['kind', *needed, *optional]}"
        )
    for name, expected in {**needed, **optional}.items():
        if name not in record or name == "seconds":
            continue
        value = record[name]
        if not _type_ok(value, expected):
            raise InputError(f"{where} ({kind}): {name} is {value!r}; needed a {expected}")
        if expected == _INT and value < (0 if name == "cached" else 1):
            raise InputError(f"{where} ({kind}): {name} is {value}; needed a positive integer")
    seconds = record["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
        math.isfinite(seconds) and seconds > 0
    ):
        raise InputError(f"{where} ({kind}): seconds is {seconds!r}; needed a positive number")
    return dict(record)


def validate_records(records: Any) -> list[Record]:
    if not isinstance(records, list):
        raise InputError(
            f"measured records must be a JSON list of objects; got {type(records).__name__}"
        )
    return [validate_record(r, i) for i, r in enumerate(records)]


def load_records(path: str | Path) -> list[Record]:
    """Records from a JSON list file or from a calibrated profile's `calibration.records`."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as err:
        raise InputError(f"cannot read measured records {str(p)!r}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise InputError(f"measured records {str(p)!r} are not valid JSON: {err}") from None
    if isinstance(data, Mapping) and isinstance(data.get("calibration"), Mapping):
        data = data["calibration"].get("records")
    return validate_records(data)


def record_work(record: Record) -> KernelWork | None:
    """The kernel work of a compute/memory record; None for a collective."""
    kind = record["kind"]
    if kind == "gemm":
        return gemm_work(record["m"], record["k"], record["n"], record["dtype"])
    if kind == "attention_decode":
        return attention_decode_work(
            batch=record["batch"], q_heads=record["q_heads"], kv_heads=record["kv_heads"],
            kv_len=record["kv_len"], head_dim=record["head_dim"],
            q_len=record.get("q_len", 1), dtype=record["dtype"],
        )
    if kind == "attention_prefill":
        return attention_prefill_work(
            batch=record["batch"], q_heads=record["q_heads"], kv_heads=record["kv_heads"],
            seq=record["seq"], head_dim=record["head_dim"], causal=record["causal"],
            cached=record.get("cached", 0), dtype=record["dtype"],
        )
    if kind == "memcpy":
        return KernelWork(kind="elementwise", flops=0.0, nbytes=float(record["nbytes"]))
    return None


def predict(record: Record, hw: HardwareSpec) -> float:
    """Predicted seconds for one record (eager launches, as measured)."""
    work = record_work(record)
    if work is not None:
        return kernel_seconds(hw, work)
    return collective_seconds(hw, "all_reduce", record["nbytes"], range(record["gpus"]))


def describe(record: Record) -> str:
    """A short shape text for tables, e.g. `m=1 k=8192 n=8192 bf16`."""
    skip = {"kind", "seconds", "device"}
    return " ".join(f"{k}={v}" for k, v in record.items() if k not in skip and k != "dtype") + (
        f" {record['dtype']}" if "dtype" in record else ""
    )


@dataclass(frozen=True, kw_only=True)
class CheckRow:
    index: int
    kind: str
    shape: str
    measured_s: float
    predicted_s: float

    @property
    def rel_error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted_s - self.measured_s) / self.measured_s


@dataclass(frozen=True, kw_only=True)
class KindSummary:
    median_abs_rel_error: float
    n: int


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    hardware: str
    rows: tuple[CheckRow, ...]
    kinds: dict[str, KindSummary]

    def to_json(self) -> dict[str, Any]:
        return {
            "kinds": {
                kind: {"median_abs_rel_error": s.median_abs_rel_error, "n": s.n}
                for kind, s in self.kinds.items()
            }
        }


def check(records: Sequence[Record], hw: HardwareSpec) -> CheckResult:
    """Predicted vs measured per record and the median |relative error| per kind."""
    rows = []
    for i, record in enumerate(validate_records(list(records))):
        rows.append(CheckRow(
            index=i, kind=record["kind"], shape=describe(record),
            measured_s=float(record["seconds"]), predicted_s=predict(record, hw),
        ))
    kinds: dict[str, KindSummary] = {}
    for kind in RECORD_KINDS:
        errors = [abs(r.rel_error) for r in rows if r.kind == kind]
        if errors:
            kinds[kind] = KindSummary(median_abs_rel_error=statistics.median(errors),
                                      n=len(errors))
    return CheckResult(hardware=hw.name, rows=tuple(rows), kinds=kinds)
