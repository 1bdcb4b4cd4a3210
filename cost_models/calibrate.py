"""Calibration: measure a GPU, fit the cost model to it, write a profile; or check a spec
against measured records.

A profile is JSON: `{"base": PRESET, "name": ..., <fitted fields>, "calibration": {"device",
"torch", "records": [...]}}`. `load_hardware(profile.json)` reads it as the base preset with
the fitted fields replaced; the base supplies what one GPU cannot measure (peak figures, the
topology, scale-out links).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cost_models.fit import fit
from cost_models.hardware import PRESETS, HardwareSpec
from cost_models.measure import CalibrationError, measure, require_cuda
from cost_models.records import Record, check, load_records, predict, validate_records

__all__ = [
    "CalibrationError",
    "base_for_device",
    "check",
    "fit",
    "load_records",
    "measure",
    "predict",
    "profile_dict",
    "run_calibration",
    "write_profile",
]

# Longest match first: "GB200" must not be read as "B200".
_DEVICE_PRESETS = (("GB200", "gb200-nvl72"), ("B200", "b200"), ("H200", "h200"),
                   ("H100", "h100-sxm"), ("A100", "a100-sxm"))


def base_for_device(device_name: str) -> str | None:
    """The preset a CUDA device name most likely is, or None."""
    upper = device_name.upper()
    for key, preset in _DEVICE_PRESETS:
        if key in upper:
            return preset
    return None


def profile_dict(
    fitted: HardwareSpec, base: str, records: Sequence[Record], *, device: str = "",
    torch_version: str = "",
) -> dict[str, Any]:
    """The profile: fields that differ from the base preset, plus the records behind them."""
    base_fields = PRESETS[base].to_dict()
    out: dict[str, Any] = {"base": base}
    for key, value in fitted.to_dict().items():
        if key == "name" or value != base_fields[key]:
            out[key] = value
    out["calibration"] = {
        "device": device, "torch": torch_version, "records": validate_records(list(records)),
    }
    return out


def write_profile(path: str | Path, profile: dict[str, Any]) -> tuple[Path, Path]:
    """Write the profile and, beside it, its records as a plain list (`*.records.json`)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=2) + "\n")
    records_path = out.with_name(out.stem + ".records.json")
    records_path.write_text(json.dumps(profile["calibration"]["records"], indent=1) + "\n")
    return out, records_path


def run_calibration(
    *, base: str | None = None, quick: bool = False, log: Callable[[str], None] = print
) -> tuple[dict[str, Any], HardwareSpec]:
    """Measure the visible GPU(s), fit the base preset to the records, return the profile."""
    torch = require_cuda()
    device = torch.cuda.get_device_properties(0).name
    base = base or base_for_device(device)
    if base is None:
        raise CalibrationError(
            f"no preset matches GPU {device!r}; pass --base with one of {', '.join(PRESETS)} "
            "for the figures one GPU cannot measure (topology, scale-out links)"
        )
    if base not in PRESETS:
        raise CalibrationError(
            f"--base {base!r} is not a preset; choose one of {', '.join(PRESETS)}"
        )
    records = measure(quick=quick, log=log)
    if not records:
        raise CalibrationError(f"no kernel could be measured on {device!r}")
    fitted = fit(records, PRESETS[base], name=f"{base}-calibrated")
    profile = profile_dict(fitted, base, records, device=device, torch_version=torch.__version__)
    return profile, fitted
