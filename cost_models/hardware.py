"""What one GPU and its links can do: `HardwareSpec`, its efficiency curves and the presets.

Every number carries its unit in its name (`hbm_bytes_per_s`, `scaleup_latency_s`). Bandwidths
are per GPU and per direction. FLOP/s are dense (no 2:4 sparsity). The preset figures come
from NVIDIA datasheets, cited beside each; latencies and efficiencies are estimates, marked as
such, which `helixplan calibrate` replaces with fitted values for the GPU it runs on.

Loading (`load_hardware`) takes a preset name, a shipped profile name, or a JSON/YAML file.
A file either states a whole spec or names a `base` preset and overrides some fields (this is
the form `helixplan calibrate` writes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ir.errors import HardwareSpecError
from ir.workload import DTYPE_BYTES

KERNEL_KINDS: tuple[str, ...] = ("gemm", "attention_prefill", "attention_decode", "elementwise")
"""Kernel families with their own efficiency curve."""

FLOP_DTYPES: tuple[str, ...] = tuple(DTYPE_BYTES)
"""Dtypes a peak FLOP/s may be stated for. `fp32` means FP32 on CUDA cores (no TF32)."""

GiB = 1024**3


def _is_required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_range(where: str, name: str, v: Any, low: float, high: float, unit: str) -> None:
    if not _is_number(v):
        raise HardwareSpecError(f"{where}: {name} is {v!r}; needed a finite number in {unit}")
    if v < low or v > high:
        hint = ""
        if "bytes/s" in unit and 0 < v < low:
            hint = " (bandwidths are bytes per second, e.g. 4.5e11 for 450 GB/s)"
        elif unit == "seconds" and v > high:
            hint = " (latencies are seconds, e.g. 2e-6 for 2 microseconds)"
        raise HardwareSpecError(
            f"{where}: {name} is {v!r}, which is nonsensical; needed {unit} in "
            f"[{low:g}, {high:g}]{hint}"
        )


def _as_float(origin: str, name: str, value: Any) -> float:
    # YAML 1.1 reads `3.35e12` (no dot, no exponent sign) as a string; accept numeric text.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if not _is_number(value):
        raise HardwareSpecError(f"{origin}: {name} is {value!r}; needed a number")
    return float(value)


def _as_int(origin: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise HardwareSpecError(f"{origin}: {name} is {value!r}; needed an integer")
    return int(value)


@dataclass(frozen=True, kw_only=True)
class KernelEfficiency:
    """How close one kernel family gets to peak, as a function of its size.

    Compute time is `flops / (peak_flops * compute_peak_fraction) + compute_fixed_s`; the
    achieved fraction of peak is therefore the saturating curve
    `compute_peak_fraction * flops / (flops + half_flops)` with
    `half_flops = compute_fixed_s * peak_flops * compute_peak_fraction`: a small GEMM or a short
    attention pays the fixed ramp/tail time and stays far from peak, a large one approaches
    `compute_peak_fraction`. The memory side is the same curve over bytes and HBM bytes/s.
    """

    compute_peak_fraction: float
    compute_fixed_s: float
    memory_peak_fraction: float
    memory_fixed_s: float

    def __post_init__(self) -> None:
        for name in ("compute_peak_fraction", "memory_peak_fraction"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 < v <= 1:
                raise HardwareSpecError(
                    f"efficiency field {name} is {v!r}; needed a fraction of peak in (0, 1]; "
                    "fix the value (e.g. 0.8)"
                )
        for name in ("compute_fixed_s", "memory_fixed_s"):
            v = getattr(self, name)
            if not _is_number(v) or not 0 <= v < 1e-2:
                raise HardwareSpecError(
                    f"efficiency field {name} is {v!r}; needed a fixed time in seconds in "
                    "[0, 0.01) (e.g. 4e-6); microseconds must be written as seconds"
                )

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


# Estimates, to be replaced by `helixplan calibrate`: cuBLAS bf16 GEMMs reach ~75-80% of dense
# peak on large shapes; FlashAttention-2 prefill ~45-55%; split-KV decode attention and
# memory-bound GEMMs ~70-80% of HBM bandwidth; a plain copy ~85-90% (STREAM-like).
DEFAULT_EFFICIENCY: dict[str, KernelEfficiency] = {
    "gemm": KernelEfficiency(
        compute_peak_fraction=0.80, compute_fixed_s=4e-6, memory_peak_fraction=0.80,
        memory_fixed_s=2e-6,
    ),
    "attention_prefill": KernelEfficiency(
        compute_peak_fraction=0.50, compute_fixed_s=8e-6, memory_peak_fraction=0.70,
        memory_fixed_s=2e-6,
    ),
    "attention_decode": KernelEfficiency(
        compute_peak_fraction=0.30, compute_fixed_s=2e-6, memory_peak_fraction=0.70,
        memory_fixed_s=4e-6,
    ),
    "elementwise": KernelEfficiency(
        compute_peak_fraction=0.50, compute_fixed_s=0.0, memory_peak_fraction=0.85,
        memory_fixed_s=2e-6,
    ),
}


@dataclass(frozen=True, kw_only=True)
class HardwareSpec:
    """One GPU model and the cluster fabric around it.

    scale-up: the NVLink/NVSwitch domain (`scaleup_domain_gpus` GPUs, full bisection inside).
    scale-out: the network between domains (one NIC per GPU, rail-aligned, non-blocking).
    `*_bytes_per_s` are per GPU, one direction; `*_link_efficiency` is the fraction of it a
    collective achieves (NCCL bus bandwidth / link bandwidth). `kernel_launch_s` is the floor of
    one eagerly launched kernel (CPU launch rate); `cuda_graph_kernel_s` the floor of one kernel
    replayed from a CUDA graph.
    """

    name: str
    peak_flops_per_s: Mapping[str, float]
    hbm_bytes_per_s: float
    hbm_capacity_bytes: float
    scaleup_domain_gpus: int
    scaleup_bytes_per_s: float
    scaleup_latency_s: float
    scaleout_bytes_per_s: float
    scaleout_latency_s: float
    # Estimates, replaced by calibration: nccl-tests all-reduce bus bandwidth is ~80% of
    # NVLink and ~90% of InfiniBand line rate; an eager decoder layer of ~50 kernels has a
    # ~0.3 ms floor on an H100 (DESIGN.md), ~6 us per kernel; CUDA-graph replay ~2 us.
    scaleup_link_efficiency: float = 0.80
    scaleout_link_efficiency: float = 0.90
    kernel_launch_s: float = 6e-6
    cuda_graph_kernel_s: float = 2e-6
    efficiency: Mapping[str, KernelEfficiency] = field(
        default_factory=lambda: dict(DEFAULT_EFFICIENCY)
    )

    def __post_init__(self) -> None:
        where = f"hardware spec {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise HardwareSpecError(
                f"hardware spec name is {self.name!r}; needed a non-empty string; "
                "add a `name` field"
            )
        if not isinstance(self.peak_flops_per_s, Mapping) or not self.peak_flops_per_s:
            raise HardwareSpecError(
                f"{where}: peak_flops_per_s is {self.peak_flops_per_s!r}; needed a mapping "
                "from dtype to dense FLOP/s, e.g. {bf16: 9.89e14, fp8: 1.979e15}"
            )
        for dtype, v in self.peak_flops_per_s.items():
            if dtype not in FLOP_DTYPES:
                raise HardwareSpecError(
                    f"{where}: peak_flops_per_s has dtype {dtype!r}; known dtypes are "
                    f"{', '.join(FLOP_DTYPES)}; rename or remove it"
                )
            _check_range(where, f"peak_flops_per_s[{dtype}]", v, 1e9, 1e18, "FLOP/s")
        if "bf16" not in self.peak_flops_per_s:
            raise HardwareSpecError(
                f"{where}: peak_flops_per_s has no bf16 entry; every spec needs the dense bf16 "
                "FLOP/s (the default compute dtype); add it"
            )
        _check_range(where, "hbm_bytes_per_s", self.hbm_bytes_per_s, 1e9, 1e15, "bytes/s")
        _check_range(where, "hbm_capacity_bytes", self.hbm_capacity_bytes, 1e8, 1e14, "bytes")
        if (
            isinstance(self.scaleup_domain_gpus, bool)
            or not isinstance(self.scaleup_domain_gpus, int)
            or self.scaleup_domain_gpus < 1
        ):
            raise HardwareSpecError(
                f"{where}: scaleup_domain_gpus is {self.scaleup_domain_gpus!r}; needed a "
                "positive integer (GPUs per NVLink domain, e.g. 8 or 72)"
            )
        for link in ("scaleup", "scaleout"):
            _check_range(where, f"{link}_bytes_per_s", getattr(self, f"{link}_bytes_per_s"),
                         1e6, 1e14, "bytes/s per GPU per direction")
            _check_range(where, f"{link}_latency_s", getattr(self, f"{link}_latency_s"),
                         0.0, 1e-2, "seconds")
            _check_range(where, f"{link}_link_efficiency",
                         getattr(self, f"{link}_link_efficiency"), 1e-3, 1.0, "fraction")
        _check_range(where, "kernel_launch_s", self.kernel_launch_s, 0.0, 1e-2, "seconds")
        _check_range(where, "cuda_graph_kernel_s", self.cuda_graph_kernel_s, 0.0, 1e-2, "seconds")
        if not isinstance(self.efficiency, Mapping):
            raise HardwareSpecError(
                f"{where}: efficiency is {self.efficiency!r}; needed a mapping from kernel kind "
                f"({', '.join(KERNEL_KINDS)}) to its curve"
            )
        missing = [k for k in KERNEL_KINDS if k not in self.efficiency]
        extra = [k for k in self.efficiency if k not in KERNEL_KINDS]
        if missing or extra:
            raise HardwareSpecError(
                f"{where}: efficiency has kinds {sorted(self.efficiency)}; needed exactly "
                f"{list(KERNEL_KINDS)} (missing {missing}, unknown {extra})"
            )
        for kind, curve in self.efficiency.items():
            if not isinstance(curve, KernelEfficiency):
                raise HardwareSpecError(
                    f"{where}: efficiency[{kind}] is {curve!r}; needed a KernelEfficiency"
                )

    def __hash__(self) -> int:
        return hash(self._hash_key)

    @cached_property
    def _hash_key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for `dtype`; an error names the dtypes this GPU has."""
        try:
            return float(self.peak_flops_per_s[dtype])
        except KeyError:
            raise HardwareSpecError(
                f"{self.name} has no peak FLOP/s for dtype {dtype!r} (its tensor cores support "
                f"{', '.join(sorted(self.peak_flops_per_s))}); choose one of those dtypes or "
                "give a hardware file that states it"
            ) from None

    def domain_of(self, gpu: int) -> int:
        """Scale-up domain of a GPU: GPUs are numbered domain by domain."""
        return gpu // self.scaleup_domain_gpus

    def to_dict(self) -> dict[str, Any]:
        """The full spec as JSON-able data (plans store it; `from_dict` reads it back)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "peak_flops_per_s":
                v = {k: float(x) for k, x in v.items()}
            elif f.name == "efficiency":
                v = {k: v[k].to_dict() for k in KERNEL_KINDS}
            elif f.name not in ("name", "scaleup_domain_gpus"):
                v = float(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "hardware spec") -> HardwareSpec:
        """Build and validate a spec from data; errors name `origin` and the bad field."""
        if not isinstance(data, Mapping):
            raise HardwareSpecError(
                f"{origin}: expected a mapping of fields, got {type(data).__name__}; write the "
                "spec as a JSON object or YAML mapping"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HardwareSpecError(
                f"{origin}: unknown field(s) {unknown}; valid fields are {sorted(known)}"
            )
        required = [f.name for f in fields(cls) if _is_required(f)]
        missing = [name for name in required if name not in data]
        if missing:
            raise HardwareSpecError(
                f"{origin}: missing field(s) {missing}; a spec needs {required} "
                "(or a `base` preset to take them from)"
            )
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name == "name":
                kwargs[name] = value
            elif name == "scaleup_domain_gpus":
                kwargs[name] = _as_int(origin, name, value)
            elif name == "peak_flops_per_s":
                if not isinstance(value, Mapping):
                    raise HardwareSpecError(
                        f"{origin}: peak_flops_per_s is {value!r}; needed a mapping from dtype "
                        "to dense FLOP/s, e.g. {bf16: 9.89e14}"
                    )
                kwargs[name] = {
                    k: _as_float(origin, f"peak_flops_per_s.{k}", v) for k, v in value.items()
                }
            elif name == "efficiency":
                kwargs[name] = _efficiency_from(origin, value)
            else:
                kwargs[name] = _as_float(origin, name, value)
        try:
            return cls(**kwargs)
        except HardwareSpecError as err:
            raise HardwareSpecError(f"{origin}: {err}") from None

    def with_efficiency(self, kind: str, curve: KernelEfficiency) -> HardwareSpec:
        """A copy with one kernel family's curve replaced."""
        return replace(self, efficiency={**self.efficiency, kind: curve})


def _efficiency_from(origin: str, value: Any) -> dict[str, KernelEfficiency]:
    if not isinstance(value, Mapping):
        raise HardwareSpecError(
            f"{origin}: efficiency is {value!r}; needed a mapping from kernel kind to curve"
        )
    out = dict(DEFAULT_EFFICIENCY)
    names = [f.name for f in fields(KernelEfficiency)]
    for kind, curve in value.items():
        if kind not in KERNEL_KINDS:
            raise HardwareSpecError(
                f"{origin}: efficiency kind {kind!r} is unknown; known kinds are "
                f"{list(KERNEL_KINDS)}"
            )
        if not isinstance(curve, Mapping) or set(curve) - set(names):
            raise HardwareSpecError(
                f"{origin}: efficiency.{kind} is {curve!r}; needed a mapping with fields {names}"
            )
        merged = {**out[kind].to_dict(), **curve}
        try:
            out[kind] = KernelEfficiency(
                **{k: _as_float(origin, f"efficiency.{kind}.{k}", v) for k, v in merged.items()}
            )
        except HardwareSpecError as err:
            raise HardwareSpecError(f"{origin}: efficiency.{kind}: {err}") from None
    return out


# Presets. Bandwidths per direction: NVLink "bidirectional" datasheet totals are halved.
# HBM capacities: the datasheet "GB" of HBM is read as GiB (stacks are binary-sized; e.g.
# nvidia-smi shows 81559 MiB usable on an H100 80GB). Scale-out: one NIC per GPU as in the
# DGX reference designs. Latencies are estimates (NCCL per-step latency from nccl-tests
# small-message runs: a few microseconds on NVLink, more across InfiniBand); calibrate.
_NVLINK_LATENCY_S = 2e-6  # estimate, see above
_IB_LATENCY_S = 6e-6  # estimate, see above

PRESETS: dict[str, HardwareSpec] = {
    "a100-sxm": HardwareSpec(
        name="a100-sxm",
        peak_flops_per_s={
            "bf16": 312e12,  # NVIDIA A100 datasheet: BF16 tensor core 312 TF dense (624 sparse)
            "fp16": 312e12,  # NVIDIA A100 datasheet: FP16 tensor core 312 TF dense
            "fp32": 19.5e12,  # NVIDIA A100 datasheet: FP32 19.5 TF (CUDA cores)
        },
        hbm_bytes_per_s=2.039e12,  # NVIDIA A100 datasheet: 80GB HBM2e, 2,039 GB/s (SXM)
        hbm_capacity_bytes=80 * GiB,  # NVIDIA A100 datasheet: 80GB
        scaleup_domain_gpus=8,  # NVIDIA DGX A100 / HGX A100: 8 GPUs on NVSwitch
        scaleup_bytes_per_s=300e9,  # NVIDIA A100 datasheet: NVLink3 600 GB/s bidirectional
        scaleup_latency_s=_NVLINK_LATENCY_S,
        scaleout_bytes_per_s=25e9,  # NVIDIA DGX A100 user guide: 8x ConnectX-6 HDR 200 Gb/s
        scaleout_latency_s=_IB_LATENCY_S,
    ),
    "h100-sxm": HardwareSpec(
        name="h100-sxm",
        peak_flops_per_s={
            "bf16": 989.4e12,  # NVIDIA H100 datasheet (SXM): BF16 1,979 TF with sparsity
            "fp16": 989.4e12,  # NVIDIA H100 datasheet (SXM): FP16 1,979 TF with sparsity
            "fp8": 1978.9e12,  # NVIDIA H100 datasheet (SXM): FP8 3,958 TF with sparsity
            "fp32": 67e12,  # NVIDIA H100 datasheet (SXM): FP32 67 TF
        },
        hbm_bytes_per_s=3.35e12,  # NVIDIA H100 datasheet (SXM): HBM3 3.35 TB/s
        hbm_capacity_bytes=80 * GiB,  # NVIDIA H100 datasheet (SXM): 80GB
        scaleup_domain_gpus=8,  # NVIDIA DGX H100 / HGX H100: 8 GPUs, 4 NVSwitch chips
        scaleup_bytes_per_s=450e9,  # NVIDIA H100 datasheet: NVLink4 900 GB/s bidirectional
        scaleup_latency_s=_NVLINK_LATENCY_S,
        scaleout_bytes_per_s=50e9,  # NVIDIA DGX H100 user guide: 8x ConnectX-7 NDR 400 Gb/s
        scaleout_latency_s=_IB_LATENCY_S,
    ),
    "h200": HardwareSpec(
        name="h200",
        peak_flops_per_s={
            "bf16": 989.4e12,  # NVIDIA H200 datasheet (SXM): BF16 1,979 TF with sparsity
            "fp16": 989.4e12,  # NVIDIA H200 datasheet (SXM): FP16 1,979 TF with sparsity
            "fp8": 1978.9e12,  # NVIDIA H200 datasheet (SXM): FP8 3,958 TF with sparsity
            "fp32": 67e12,  # NVIDIA H200 datasheet (SXM): FP32 67 TF
        },
        hbm_bytes_per_s=4.8e12,  # NVIDIA H200 datasheet: HBM3e 4.8 TB/s
        hbm_capacity_bytes=141 * GiB,  # NVIDIA H200 datasheet: 141GB
        scaleup_domain_gpus=8,  # NVIDIA HGX H200: 8 GPUs on NVSwitch
        scaleup_bytes_per_s=450e9,  # NVIDIA H200 datasheet: NVLink 900 GB/s bidirectional
        scaleup_latency_s=_NVLINK_LATENCY_S,
        scaleout_bytes_per_s=50e9,  # NVIDIA HGX H200 reference: ConnectX-7 400 Gb/s per GPU
        scaleout_latency_s=_IB_LATENCY_S,
    ),
    "b200": HardwareSpec(
        name="b200",
        peak_flops_per_s={
            # NVIDIA HGX B200 datasheet, 8-GPU totals with sparsity divided by 8 and by 2:
            "bf16": 2.25e15,  # BF16 36 PF sparse / 8 GPUs / 2 (some sources quote 2.5 PF)
            "fp16": 2.25e15,  # FP16 36 PF sparse / 8 / 2
            "fp8": 4.5e15,  # FP8 72 PF sparse / 8 / 2
            "fp4": 9e15,  # FP4 144 PF sparse / 8 / 2
            "fp32": 75e12,  # FP32 600 TF / 8
        },
        hbm_bytes_per_s=8e12,  # NVIDIA HGX B200 datasheet: 64 TB/s HBM3e / 8 GPUs
        hbm_capacity_bytes=180 * GiB,  # NVIDIA HGX B200 datasheet: 1.44 TB / 8 GPUs
        scaleup_domain_gpus=8,  # NVIDIA HGX B200: 8 GPUs on NVLink5 switches
        scaleup_bytes_per_s=900e9,  # NVIDIA HGX B200 datasheet: NVLink5 1.8 TB/s bidirectional
        scaleup_latency_s=_NVLINK_LATENCY_S,
        scaleout_bytes_per_s=50e9,  # NVIDIA DGX B200 user guide: 8x ConnectX-7 400 Gb/s
        scaleout_latency_s=_IB_LATENCY_S,
    ),
    "gb200-nvl72": HardwareSpec(
        name="gb200-nvl72",
        peak_flops_per_s={
            # NVIDIA GB200 NVL72 datasheet, rack totals with sparsity divided by 72 and by 2:
            "bf16": 2.5e15,  # FP16/BF16 360 PF sparse / 72 / 2
            "fp16": 2.5e15,  # FP16/BF16 360 PF sparse / 72 / 2
            "fp8": 5e15,  # FP8 720 PF sparse / 72 / 2
            "fp4": 10e15,  # FP4 1,440 PF sparse / 72 / 2
            "fp32": 80e12,  # FP32 5,760 TF / 72
        },
        hbm_bytes_per_s=8e12,  # NVIDIA GB200 NVL72 datasheet: 576 TB/s HBM3e / 72 GPUs
        hbm_capacity_bytes=186 * GiB,  # NVIDIA GB200 NVL72 datasheet: 13.4 TB / 72 GPUs
        scaleup_domain_gpus=72,  # NVIDIA GB200 NVL72 datasheet: 72-GPU NVLink domain
        scaleup_bytes_per_s=900e9,  # NVIDIA GB200 NVL72 datasheet: 130 TB/s / 72 = 1.8 TB/s bidi
        scaleup_latency_s=_NVLINK_LATENCY_S,
        scaleout_bytes_per_s=50e9,  # NVIDIA GB200 NVL72 compute tray: ConnectX-7 400 Gb/s per GPU
        scaleout_latency_s=_IB_LATENCY_S,
    ),
}

PROFILE_DIR = Path(__file__).parent / "profiles"
_FILE_SUFFIXES = (".json", ".yaml", ".yml")
_METADATA_KEYS = ("base", "calibration")


def available_hardware() -> list[str]:
    """Preset names and shipped calibrated profiles (`cost_models/profiles/*.json`)."""
    shipped = sorted(p.stem for p in PROFILE_DIR.glob("*.json")) if PROFILE_DIR.is_dir() else []
    return list(PRESETS) + [name for name in shipped if name not in PRESETS]


def load_hardware(name_or_path: str | Path) -> HardwareSpec:
    """A preset by name, a shipped profile by name, or a spec/profile file (.json/.yaml/.yml).

    A file may name a `base` preset; its other fields then override the base's (nested
    `peak_flops_per_s` and `efficiency` merge per key). A `calibration` key is metadata and is
    ignored here.
    """
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    shipped = PROFILE_DIR / f"{text}.json"
    if "/" not in text and shipped.is_file():
        return _load_file(shipped)
    path = Path(text)
    if path.suffix.lower() in _FILE_SUFFIXES or path.exists():
        if not path.is_file():
            raise HardwareSpecError(
                f"hardware file {text!r} does not exist; give an existing .json/.yaml file or "
                f"a preset name ({', '.join(available_hardware())})"
            )
        return _load_file(path)
    raise HardwareSpecError(
        f"hardware {text!r} is neither a preset nor a file; valid presets are "
        f"{', '.join(available_hardware())}; or pass a .json/.yaml spec file"
    )


def _load_file(path: Path) -> HardwareSpec:
    origin = f"hardware file {str(path)!r}"
    is_json = path.suffix.lower() == ".json"
    if not is_json:
        import yaml  # YAML files only: a preset or a JSON profile never pays its import

        not_parsed: tuple[type[Exception], ...] = (OSError, yaml.YAMLError)
    else:
        not_parsed = (OSError, json.JSONDecodeError)
    try:
        raw = path.read_text()
        data = json.loads(raw) if is_json else yaml.safe_load(raw)
    except not_parsed as err:
        raise HardwareSpecError(
            f"{origin} could not be read: {err}; needed valid JSON or YAML"
        ) from None
    return spec_from_data(data, origin=origin, default_name=path.stem)


def spec_from_data(
    data: Any, *, origin: str = "hardware spec", default_name: str = "custom"
) -> HardwareSpec:
    """A spec from parsed file data, resolving an optional `base` preset."""
    if not isinstance(data, Mapping):
        raise HardwareSpecError(
            f"{origin}: expected a mapping of fields, got {type(data).__name__}; write the "
            "spec as a JSON object or YAML mapping"
        )
    fields_data = {k: v for k, v in data.items() if k not in _METADATA_KEYS}
    base_name = data.get("base")
    if base_name is None:
        return HardwareSpec.from_dict(fields_data, origin=origin)
    if base_name not in PRESETS:
        raise HardwareSpecError(
            f"{origin}: base {base_name!r} is not a preset; valid presets are "
            f"{', '.join(PRESETS)}"
        )
    merged = PRESETS[base_name].to_dict()
    merged["name"] = f"{base_name}:{default_name}"
    for key, value in fields_data.items():
        if key in ("peak_flops_per_s", "efficiency") and isinstance(value, Mapping):
            inner = dict(merged[key])
            for k, v in value.items():
                inner[k] = {**inner[k], **v} if isinstance(v, Mapping) and k in inner else v
            merged[key] = inner
        else:
            merged[key] = value
    return HardwareSpec.from_dict(merged, origin=origin)
