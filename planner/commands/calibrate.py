"""`helixplan calibrate`: measure this GPU into a profile, or check a spec against
measured kernel records.

    helixplan calibrate --out profile.json [--base h100-sxm] [--quick]
    helixplan calibrate --check MEASURED.json [--hardware NAME|FILE] [--json]

`--out` needs a CUDA GPU (without one it says so and exits 2); it writes the profile (use it
as `--hardware profile.json`) and the raw records beside it (`profile.records.json`).
`--check` runs anywhere: predicted vs measured per record and the median absolute relative
error per kind; `--json` prints `{"kinds": {KIND: {"median_abs_rel_error": x, "n": n}}}`.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from cost_models.hardware import PRESETS, load_hardware
from cost_models.records import CheckResult, check, load_records
from ir.errors import InputError

NAME = "calibrate"
HELP = (
    "Measure this GPU (GEMM, attention, HBM copy, collectives) into a hardware profile, or "
    "check a hardware spec against measured kernel records."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="PATH",
                        help="measure this GPU and write the fitted profile here (needs CUDA)")
    parser.add_argument("--check", metavar="MEASURED.json",
                        help="compare predictions with measured kernel records")
    parser.add_argument("--hardware", default="h100-sxm", metavar="NAME|FILE",
                        help="spec to check against: a preset, a profile or a spec file "
                             "(default: h100-sxm)")
    parser.add_argument("--base", choices=sorted(PRESETS), default=None,
                        help="preset for what one GPU cannot measure (default: from the "
                             "device name)")
    parser.add_argument("--quick", action="store_true", help="measure a small grid of shapes")
    parser.add_argument("--json", action="store_true", help="print the check summary as JSON")


def run(args: argparse.Namespace) -> int:
    if bool(args.out) == bool(args.check):
        raise InputError(
            "calibrate needs exactly one of --out PATH (measure this GPU) or --check "
            "MEASURED.json (compare a spec with measured records)"
        )
    console = Console()
    if args.check:
        hw = load_hardware(args.hardware)
        result = check(load_records(args.check), hw)
        if args.json:
            print(json.dumps(result.to_json(), indent=2, sort_keys=True))
        else:
            _print_check(console, result)
        return 0
    def log(message: str) -> None:
        if not args.json:
            console.print(message, markup=False, highlight=False)

    from cost_models.calibrate import run_calibration, write_profile  # numpy, torch: only here

    profile, fitted = run_calibration(base=args.base, quick=args.quick, log=log)
    profile_path, records_path = write_profile(args.out, profile)
    result = check(profile["calibration"]["records"], fitted)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        _print_summary(console, result)
        console.print(f"wrote {profile_path} (use --hardware {profile_path}) and {records_path}")
    return 0


def _print_check(console: Console, result: CheckResult) -> None:
    table = Table(title=f"predicted vs measured on {result.hardware}")
    for column in ("#", "kind", "shape", "measured us", "predicted us", "rel error"):
        table.add_column(column, justify="left" if column in ("kind", "shape") else "right")
    for row in result.rows:
        table.add_row(
            str(row.index), row.kind, row.shape, f"{row.measured_s * 1e6:.2f}",
            f"{row.predicted_s * 1e6:.2f}", f"{row.rel_error:+.1%}",
        )
    console.print(table)
    _print_summary(console, result)


def _print_summary(console: Console, result: CheckResult) -> None:
    table = Table(title="median |relative error| per kind")
    table.add_column("kind")
    table.add_column("n", justify="right")
    table.add_column("median |rel error|", justify="right")
    for kind, summary in result.kinds.items():
        table.add_row(kind, str(summary.n), f"{summary.median_abs_rel_error:.1%}")
    console.print(table)
