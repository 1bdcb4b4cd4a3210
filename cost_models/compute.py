"""Time of one kernel: a roofline with size-dependent efficiency and a launch floor.

    seconds = max(floor,
                  flops / (peak_flops[dtype] · compute_peak_fraction) + compute_fixed_s,
                  bytes / (hbm_bytes_per_s · memory_peak_fraction) + memory_fixed_s)

with the curve of the kernel's family (`HardwareSpec.efficiency[kind]`, see
`KernelEfficiency` for why this is a saturating efficiency over work size) and `floor` the
per-kernel launch time: `kernel_launch_s` eagerly, `cuda_graph_kernel_s` inside a CUDA graph.
A term with no work (0 FLOPs or 0 bytes) is dropped.

Each kernel has a `*_work` function giving its FLOPs and HBM bytes (testable by hand) and a
`*_seconds` function pricing that work; `kernel_seconds` is the one pricing entry point.
Bytes count one pass over HBM: operands read once and outputs written once (tiles re-read
from L2/shared memory are free).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cost_models.hardware import KERNEL_KINDS, HardwareSpec
from ir.errors import InputError
from ir.workload import DTYPE_BYTES, dtype_size_bytes


@dataclass(frozen=True, kw_only=True)
class KernelWork:
    """What one kernel does: FLOPs, HBM bytes moved, the dtype its FLOPs run in, its family."""

    kind: str
    flops: float
    nbytes: float
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        if self.kind not in KERNEL_KINDS:
            raise InputError(
                f"kernel kind {self.kind!r} is unknown; choose one of {', '.join(KERNEL_KINDS)}"
            )
        for name in ("flops", "nbytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v >= 0
            ):
                raise InputError(f"kernel {name} is {v!r}; needed a finite number >= 0")
        dtype_size_bytes(self.dtype)


def _positive_ints(**dims: int) -> None:
    for name, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} is {v!r}; needed a positive integer")


def kernel_floor_s(hw: HardwareSpec, cuda_graphs: bool = False) -> float:
    """The least time one kernel takes: launch-bound eagerly, smaller in a CUDA graph."""
    return hw.cuda_graph_kernel_s if cuda_graphs else hw.kernel_launch_s


def kernel_seconds(hw: HardwareSpec, work: KernelWork, *, cuda_graphs: bool = False) -> float:
    """Seconds for one kernel of `work` on `hw` (the roofline in the module docstring)."""
    curve = hw.efficiency[work.kind]
    t = kernel_floor_s(hw, cuda_graphs)
    if work.flops > 0:
        peak = hw.peak_flops(work.dtype) * curve.compute_peak_fraction
        t = max(t, work.flops / peak + curve.compute_fixed_s)
    if work.nbytes > 0:
        bw = hw.hbm_bytes_per_s * curve.memory_peak_fraction
        t = max(t, work.nbytes / bw + curve.memory_fixed_s)
    return t


def roofline_seconds(
    hw: HardwareSpec,
    *,
    flops: float,
    nbytes: float,
    dtype: str = "bf16",
    kind: str = "gemm",
    cuda_graphs: bool = False,
) -> float:
    """Roofline time of `flops` FLOPs in `dtype` and `nbytes` bytes of HBM traffic."""
    return kernel_seconds(
        hw, KernelWork(kind=kind, flops=flops, nbytes=nbytes, dtype=dtype), cuda_graphs=cuda_graphs
    )


def achieved_fraction(hw: HardwareSpec, work: KernelWork, *, cuda_graphs: bool = False) -> float:
    """Fraction of dense peak FLOP/s a kernel reaches (0 for a kernel without FLOPs)."""
    if work.flops == 0:
        return 0.0
    seconds = kernel_seconds(hw, work, cuda_graphs=cuda_graphs)
    return work.flops / seconds / hw.peak_flops(work.dtype)


def gemm_work(m: int, k: int, n: int, dtype: str = "bf16", *, batch: int = 1) -> KernelWork:
    """`batch` independent (m×k)·(k×n) products. FLOPs 2·batch·m·k·n. Bytes: both operands
    read and the output written; fp8/fp4 GEMMs write a bf16 output."""
    _positive_ints(m=m, k=k, n=n, batch=batch)
    e = dtype_size_bytes(dtype)
    out_e = max(e, DTYPE_BYTES["bf16"]) if dtype in ("fp8", "fp4") else e
    nbytes = batch * ((m * k + k * n) * e + m * n * out_e)
    return KernelWork(kind="gemm", flops=2.0 * batch * m * k * n, nbytes=nbytes, dtype=dtype)


def gemm_seconds(
    hw: HardwareSpec,
    m: int,
    k: int,
    n: int,
    dtype: str = "bf16",
    *,
    batch: int = 1,
    cuda_graphs: bool = False,
) -> float:
    return kernel_seconds(hw, gemm_work(m, k, n, dtype, batch=batch), cuda_graphs=cuda_graphs)


def attention_pairs(seq: int, cached: int, causal: bool) -> int:
    """(query, key) pairs per head for `seq` new tokens after `cached` prefix tokens:
    causal, new token i sees cached + i + 1 keys, so seq·cached + seq(seq+1)/2."""
    if causal:
        return seq * cached + seq * (seq + 1) // 2
    return seq * (cached + seq)


def attention_prefill_work(
    *,
    batch: int,
    q_heads: int,
    kv_heads: int,
    seq: int,
    head_dim: int,
    causal: bool = True,
    cached: int = 0,
    v_head_dim: int | None = None,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    latent_kv: bool = False,
) -> KernelWork:
    """Flash-style prefill of `seq` new tokens over `cached` + `seq` keys.

    FLOPs = 2·batch·q_heads·pairs·(head_dim + v_head_dim) (QKᵀ and PV). Bytes: Q read, new and
    cached K/V read once, O written. `latent_kv` (MLA absorbed form): V is the first
    `v_head_dim` columns of the same cached latent as K, so only K is read.
    """
    _positive_ints(batch=batch, q_heads=q_heads, kv_heads=kv_heads, seq=seq, head_dim=head_dim)
    if isinstance(cached, bool) or not isinstance(cached, int) or cached < 0:
        raise InputError(f"cached is {cached!r}; needed an integer >= 0")
    dv = head_dim if v_head_dim is None else v_head_dim
    _positive_ints(v_head_dim=dv)
    e, kv_e = dtype_size_bytes(dtype), dtype_size_bytes(kv_dtype or dtype)
    pairs = attention_pairs(seq, cached, causal)
    flops = 2.0 * batch * q_heads * pairs * (head_dim + dv)
    kv_len = cached + seq
    kv_width = head_dim if latent_kv else head_dim + dv
    nbytes = (
        batch * q_heads * seq * head_dim * e
        + batch * kv_heads * kv_len * kv_width * kv_e
        + batch * q_heads * seq * dv * e
    )
    return KernelWork(kind="attention_prefill", flops=flops, nbytes=nbytes, dtype=dtype)


def attention_prefill_seconds(
    hw: HardwareSpec,
    batch: int,
    q_heads: int,
    kv_heads: int,
    seq: int,
    head_dim: int,
    causal: bool = True,
    cached: int = 0,
    dtype: str = "bf16",
    *,
    v_head_dim: int | None = None,
    kv_dtype: str | None = None,
    latent_kv: bool = False,
    cuda_graphs: bool = False,
) -> float:
    work = attention_prefill_work(
        batch=batch, q_heads=q_heads, kv_heads=kv_heads, seq=seq, head_dim=head_dim,
        causal=causal, cached=cached, v_head_dim=v_head_dim, dtype=dtype, kv_dtype=kv_dtype,
        latent_kv=latent_kv,
    )
    return kernel_seconds(hw, work, cuda_graphs=cuda_graphs)


def attention_decode_work(
    *,
    batch: int,
    q_heads: int,
    kv_heads: int,
    kv_len: int,
    head_dim: int,
    q_len: int = 1,
    v_head_dim: int | None = None,
    dtype: str = "bf16",
    kv_dtype: str | None = None,
    latent_kv: bool = False,
) -> KernelWork:
    """Decode attention of `q_len` new tokens per sequence over `kv_len` cached keys.

    Bandwidth-bound: the whole KV cache of the batch is read once,
    batch·kv_heads·kv_len·(head_dim + v_head_dim)·kv_bytes (only head_dim with `latent_kv`),
    plus Q read and O written. FLOPs = 2·batch·q_heads·q_len·kv_len·(head_dim + v_head_dim).
    """
    _positive_ints(
        batch=batch, q_heads=q_heads, kv_heads=kv_heads, kv_len=kv_len, head_dim=head_dim,
        q_len=q_len,
    )
    dv = head_dim if v_head_dim is None else v_head_dim
    _positive_ints(v_head_dim=dv)
    e, kv_e = dtype_size_bytes(dtype), dtype_size_bytes(kv_dtype or dtype)
    kv_width = head_dim if latent_kv else head_dim + dv
    nbytes = (
        batch * kv_heads * kv_len * kv_width * kv_e
        + batch * q_heads * q_len * head_dim * e
        + batch * q_heads * q_len * dv * e
    )
    flops = 2.0 * batch * q_heads * q_len * kv_len * (head_dim + dv)
    return KernelWork(kind="attention_decode", flops=flops, nbytes=nbytes, dtype=dtype)


def attention_decode_seconds(
    hw: HardwareSpec,
    batch: int,
    q_heads: int,
    kv_heads: int,
    kv_len: int,
    head_dim: int,
    dtype: str = "bf16",
    q_len: int = 1,
    *,
    v_head_dim: int | None = None,
    kv_dtype: str | None = None,
    latent_kv: bool = False,
    cuda_graphs: bool = False,
) -> float:
    work = attention_decode_work(
        batch=batch, q_heads=q_heads, kv_heads=kv_heads, kv_len=kv_len, head_dim=head_dim,
        q_len=q_len, v_head_dim=v_head_dim, dtype=dtype, kv_dtype=kv_dtype, latent_kv=latent_kv,
    )
    return kernel_seconds(hw, work, cuda_graphs=cuda_graphs)


def elementwise_seconds(
    hw: HardwareSpec, nbytes: float, *, cuda_graphs: bool = False
) -> float:
    """A memory-bound kernel moving `nbytes` (bytes read + bytes written), e.g. a copy of an
    N-byte tensor moves 2N."""
    return kernel_seconds(
        hw, KernelWork(kind="elementwise", flops=0.0, nbytes=nbytes), cuda_graphs=cuda_graphs
    )
