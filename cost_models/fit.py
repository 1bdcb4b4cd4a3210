"""Fitting the efficiency curves, the launch floor and the NVLink collective parameters to
measured records.

Per kernel family the model is (see `cost_models.compute`)

    t = max(floor, f/fc + tc, b/fm + tm)

with f = FLOPs / peak FLOP/s and b = bytes / HBM bytes/s (seconds at peak), four parameters
per family (fc, tc, fm, tm) and one floor shared by all. The loss is the sum over records of
(log predicted - log measured)², so every shape counts by its relative error. The `max` makes
the loss non-smooth, so it is minimized by block coordinate descent over grids: the floor
(1-D), then per family the compute pair (2-D grid) and the memory pair (2-D grid), repeated,
then again on finer grids around the incumbent. A parameter that no record constrains keeps
its base value (a tiny pull toward the base breaks ties).

All-reduce records (GPUs of one scale-up domain) fit the scale-up latency and link
efficiency the same way, through the formulas of `cost_models.comm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from cost_models.comm import Link, ring_all_reduce_s, tree_all_reduce_s
from cost_models.hardware import HardwareSpec, KernelEfficiency
from cost_models.records import Record, record_work, validate_records

_TIE_BREAK = 1e-3
_FRACTIONS = np.linspace(0.02, 1.0, 99)
_FIXED_S = np.concatenate([[0.0], np.geomspace(1e-7, 3e-4, 90)])
_FLOORS_S = np.concatenate([[0.0], np.geomspace(2e-7, 1e-4, 120)])
_COARSE_ROUNDS = 6
_FINE_ROUNDS = 4


@dataclass
class _KindData:
    flops_s: np.ndarray  # FLOPs / peak FLOP/s of the record's dtype
    bytes_s: np.ndarray  # bytes / HBM bytes/s
    log_measured: np.ndarray


def _term(work_s: np.ndarray, fraction: np.ndarray, fixed_s: np.ndarray) -> np.ndarray:
    """work/fraction + fixed where there is work, 0 where there is none (broadcasting)."""
    return np.where(work_s > 0, work_s / fraction + fixed_s, 0.0)


def _loss(pred: np.ndarray, log_measured: np.ndarray) -> np.ndarray:
    return np.sum((np.log(pred) - log_measured) ** 2, axis=-1)


def _pull(value: np.ndarray, base: float, floor: float = 1e-7) -> np.ndarray:
    return _TIE_BREAK * np.log((value + floor) / (base + floor)) ** 2


class _KernelFit:
    """Parameters of one kernel family under coordinate descent."""

    def __init__(self, data: _KindData, curve: KernelEfficiency) -> None:
        self.data = data
        self.base = curve
        self.fc, self.tc = curve.compute_peak_fraction, curve.compute_fixed_s
        self.fm, self.tm = curve.memory_peak_fraction, curve.memory_fixed_s

    def compute_term(self) -> np.ndarray:
        return _term(self.data.flops_s, np.float64(self.fc), np.float64(self.tc))

    def memory_term(self) -> np.ndarray:
        return _term(self.data.bytes_s, np.float64(self.fm), np.float64(self.tm))

    def loss(self, floor: float | np.ndarray) -> np.ndarray:
        pred = np.maximum(np.maximum(self.compute_term(), self.memory_term()), floor)
        return _loss(pred, self.data.log_measured)

    def _best_pair(
        self, work_s: np.ndarray, other: np.ndarray, floor: float,
        fractions: np.ndarray, fixed: np.ndarray, base_fraction: float, base_fixed: float,
    ) -> tuple[float, float]:
        term = _term(work_s[None, None, :], fractions[:, None, None], fixed[None, :, None])
        pred = np.maximum(np.maximum(term, other[None, None, :]), floor)
        loss = _loss(pred, self.data.log_measured)
        loss = loss + _pull(fractions, base_fraction)[:, None] + _pull(fixed, base_fixed)[None, :]
        i, j = np.unravel_index(np.argmin(loss), loss.shape)
        return float(fractions[i]), float(fixed[j])

    def step(self, floor: float, fine: bool) -> None:
        fc_grid, tc_grid = _grids(self.fc, self.tc, fine)
        self.fc, self.tc = self._best_pair(
            self.data.flops_s, self.memory_term(), floor, fc_grid, tc_grid,
            self.base.compute_peak_fraction, self.base.compute_fixed_s,
        )
        fm_grid, tm_grid = _grids(self.fm, self.tm, fine)
        self.fm, self.tm = self._best_pair(
            self.data.bytes_s, self.compute_term(), floor, fm_grid, tm_grid,
            self.base.memory_peak_fraction, self.base.memory_fixed_s,
        )

    def curve(self) -> KernelEfficiency:
        return KernelEfficiency(
            compute_peak_fraction=self.fc, compute_fixed_s=self.tc,
            memory_peak_fraction=self.fm, memory_fixed_s=self.tm,
        )


def _grids(fraction: float, fixed_s: float, fine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Full grids, or finer ones around the incumbent (always including it)."""
    if not fine:
        return np.append(_FRACTIONS, fraction), np.append(_FIXED_S, fixed_s)
    fractions = np.clip(fraction * np.geomspace(0.9, 1.1, 41), 1e-3, 1.0)
    fixed = np.concatenate([[0.0], max(fixed_s, 1e-8) * np.geomspace(0.7, 1.4, 41)])
    return np.append(fractions, fraction), np.append(fixed, fixed_s)


def _kernel_data(records: Sequence[Record], hw: HardwareSpec) -> dict[str, _KindData]:
    grouped: dict[str, list[tuple[float, float, float]]] = {}
    for record in records:
        work = record_work(record)
        if work is None:
            continue
        flops_s = work.flops / hw.peak_flops(work.dtype) if work.flops else 0.0
        grouped.setdefault(work.kind, []).append(
            (flops_s, work.nbytes / hw.hbm_bytes_per_s, float(record["seconds"]))
        )
    return {
        kind: _KindData(
            flops_s=np.array([r[0] for r in rows]),
            bytes_s=np.array([r[1] for r in rows]),
            log_measured=np.log(np.array([r[2] for r in rows])),
        )
        for kind, rows in grouped.items()
    }


def _fit_floor(fits: dict[str, _KernelFit], floor: float, fine: bool) -> float:
    grid = floor * np.geomspace(0.7, 1.4, 41) if fine and floor > 0 else _FLOORS_S
    grid = np.append(grid, floor)
    total = sum(f.loss(grid[:, None]) for f in fits.values())
    total = total + _pull(grid, floor)
    return float(grid[int(np.argmin(total))])


def _fit_all_reduce(records: Sequence[Record], hw: HardwareSpec) -> HardwareSpec:
    rows = [r for r in records if r["kind"] == "all_reduce" and 1 < r["gpus"]
            <= hw.scaleup_domain_gpus]
    if not rows:
        return hw
    alpha, eff = hw.scaleup_latency_s, hw.scaleup_link_efficiency
    log_measured = np.log(np.array([r["seconds"] for r in rows]))
    for fine in [False] * _COARSE_ROUNDS + [True] * _FINE_ROUNDS:
        eff_grid, alpha_grid = _grids(eff, alpha, fine)
        link = Link(
            alpha_s=alpha_grid[None, :, None],
            bytes_per_s=hw.scaleup_bytes_per_s * eff_grid[:, None, None],
        )
        pred = np.stack([
            np.minimum(ring_all_reduce_s(r["gpus"], float(r["nbytes"]), link),
                       tree_all_reduce_s(r["gpus"], float(r["nbytes"]), link))[..., 0]
            for r in rows
        ], axis=-1)
        loss = _loss(pred, log_measured)
        loss = loss + _pull(eff_grid, hw.scaleup_link_efficiency)[:, None]
        loss = loss + _pull(alpha_grid, hw.scaleup_latency_s)[None, :]
        i, j = np.unravel_index(np.argmin(loss), loss.shape)
        eff, alpha = float(eff_grid[i]), float(alpha_grid[j])
    return replace(hw, scaleup_latency_s=alpha, scaleup_link_efficiency=eff)


def fit(records: Sequence[Record], base: HardwareSpec, *, name: str | None = None) -> HardwareSpec:
    """`base` with efficiency curves, launch floor and (given all-reduce records) scale-up
    latency and link efficiency fitted to `records`. Peak figures stay the base's."""
    records = validate_records(list(records))
    data = _kernel_data(records, base)
    fits = {kind: _KernelFit(d, base.efficiency[kind]) for kind, d in data.items()}
    floor = base.kernel_launch_s
    for fine in [False] * _COARSE_ROUNDS + [True] * _FINE_ROUNDS:
        if fits:
            floor = _fit_floor(fits, floor, fine)
        for kernel_fit in fits.values():
            kernel_fit.step(floor, fine)
    efficiency = {**base.efficiency, **{kind: f.curve() for kind, f in fits.items()}}
    fitted = replace(
        base,
        name=name or f"{base.name}-calibrated",
        efficiency=efficiency,
        kernel_launch_s=floor,
    )
    return _fit_all_reduce(records, fitted)
