"""Measuring kernels on a CUDA GPU (torch is imported here only).

Each shape is timed with CUDA events: a few warm-up launches, then `repeats` samples of
`inner` back-to-back launches each, and the median per launch. Back-to-back launches are what
the cost model prices eagerly: max(launch floor, kernel time). Operands rotate over enough
copies to exceed twice the L2 cache, so memory-bound kernels read HBM and not L2.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cost_models.records import Record
from ir.errors import PlannerError

_MAX_SET_BYTES = 8 * 1024**3  # skip shapes whose operands exceed this


class CalibrationError(PlannerError):
    """Calibration cannot run here (no CUDA GPU) or a measurement failed."""


@dataclass(frozen=True, kw_only=True)
class MeasureGrid:
    gemm_m: tuple[int, ...]
    gemm_kn: tuple[tuple[int, int], ...]
    decode_batch: tuple[int, ...]
    decode_kv_len: tuple[int, ...]
    prefill_batch: tuple[int, ...]
    prefill_seq: tuple[int, ...]
    heads: tuple[tuple[int, int], ...]
    head_dim: int
    copy_bytes: tuple[int, ...]
    all_reduce_bytes: tuple[int, ...]


FULL_GRID = MeasureGrid(
    gemm_m=(1, 8, 32, 128, 512, 2048, 8192),
    gemm_kn=((4096, 4096), (8192, 8192), (8192, 28672), (28672, 8192), (1024, 8192),
             (8192, 1024)),
    decode_batch=(1, 8, 32, 128),
    decode_kv_len=(512, 2048, 8192, 32768),
    prefill_batch=(1, 4),
    prefill_seq=(256, 1024, 4096, 16384),
    heads=((32, 8), (64, 8)),
    head_dim=128,
    copy_bytes=tuple(2**p for p in range(16, 32, 2)),
    all_reduce_bytes=tuple(2**p for p in range(10, 30, 2)),
)
QUICK_GRID = MeasureGrid(
    gemm_m=(1, 64, 1024, 8192),
    gemm_kn=((4096, 4096), (8192, 8192)),
    decode_batch=(1, 16),
    decode_kv_len=(1024, 16384),
    prefill_batch=(1,),
    prefill_seq=(512, 4096),
    heads=((32, 8),),
    head_dim=128,
    copy_bytes=(2**20, 2**24, 2**28),
    all_reduce_bytes=(2**12, 2**20, 2**26),
)

_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def require_cuda() -> Any:
    """torch, after checking that a CUDA GPU is visible."""
    import torch

    if not torch.cuda.is_available():
        raise CalibrationError(
            "calibration measures kernels on a CUDA GPU, and this machine has none visible "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); run "
            "`helixplan calibrate --out profile.json` on a GPU machine with a CUDA build of "
            "torch, or use `--check MEASURED.json` to compare measured records here"
        )
    return torch


def time_cuda(torch: Any, fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 15,
              sample_s: float = 5e-4) -> float:
    """Median seconds per launch of `fn` (CUDA events, back-to-back launches)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    estimate_s = max(start.elapsed_time(end) / 1e3, 1e-7)
    inner = max(1, min(200, math.ceil(sample_s / estimate_s)))
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / inner)
    return statistics.median(samples)


def _rotating(torch: Any, make: Callable[[], tuple], set_bytes: int, l2_bytes: int) -> Iterator:
    copies = max(1, min(32, math.ceil(2 * l2_bytes / max(set_bytes, 1))))
    sets = [make() for _ in range(copies)]
    while True:
        yield from sets


def _timed(torch: Any, make: Callable[[], tuple], op: Callable[..., Any], set_bytes: int,
           l2_bytes: int) -> float:
    operands = _rotating(torch, make, set_bytes, l2_bytes)
    seconds = time_cuda(torch, lambda: op(*next(operands)))
    operands.close()
    torch.cuda.empty_cache()
    return seconds


def measure(*, quick: bool = False, dtype: str = "bf16", device_index: int = 0,
            log: Callable[[str], None] = lambda _: None) -> list[Record]:
    """Records for GEMMs, decode and prefill attention, HBM copies and (with more than one
    visible GPU) all-reduces, in the format of `cost_models.records`."""
    torch = require_cuda()
    if dtype not in _TORCH_DTYPES:
        raise CalibrationError(
            f"calibration dtype {dtype!r} is not measurable here; choose one of "
            f"{', '.join(_TORCH_DTYPES)}"
        )
    grid = QUICK_GRID if quick else FULL_GRID
    device = torch.device("cuda", device_index)
    torch.cuda.set_device(device)
    props = torch.cuda.get_device_properties(device)
    l2_bytes = int(getattr(props, "L2_cache_size", 50 * 1024**2))
    tdtype = getattr(torch, _TORCH_DTYPES[dtype])
    esize = torch.tensor([], dtype=tdtype).element_size()
    name = props.name
    records: list[Record] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def add(record: Record, make: Callable[[], tuple], op: Callable[..., Any],
            set_bytes: int) -> None:
        if set_bytes > _MAX_SET_BYTES:
            return
        try:
            seconds = _timed(torch, make, op, set_bytes, l2_bytes)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            log(f"skipped (out of memory): {record}")
            return
        records.append({**record, "seconds": seconds, "device": name})
        log(f"{record['kind']:<18} {seconds * 1e6:10.2f} us  {record}")

    with torch.inference_mode():
        for k, n in grid.gemm_kn:
            for m in grid.gemm_m:
                add({"kind": "gemm", "m": m, "k": k, "n": n, "dtype": dtype},
                    lambda m=m, k=k, n=n: (torch.randn(m, k, device=device, dtype=tdtype),
                                           torch.randn(k, n, device=device, dtype=tdtype)),
                    torch.matmul, (m * k + k * n + m * n) * esize)
        d = grid.head_dim
        for q_heads, kv_heads in grid.heads:
            for batch in grid.decode_batch:
                for kv_len in grid.decode_kv_len:
                    add({"kind": "attention_decode", "batch": batch, "q_heads": q_heads,
                         "kv_heads": kv_heads, "kv_len": kv_len, "head_dim": d, "dtype": dtype},
                        lambda b=batch, h=q_heads, kh=kv_heads, L=kv_len: (
                            torch.randn(b, h, 1, d, device=device, dtype=tdtype),
                            torch.randn(b, kh, L, d, device=device, dtype=tdtype),
                            torch.randn(b, kh, L, d, device=device, dtype=tdtype)),
                        lambda q, k, v: sdpa(q, k, v, enable_gqa=True),
                        2 * batch * kv_heads * kv_len * d * esize)
            for batch in grid.prefill_batch:
                for seq in grid.prefill_seq:
                    add({"kind": "attention_prefill", "batch": batch, "q_heads": q_heads,
                         "kv_heads": kv_heads, "seq": seq, "head_dim": d, "causal": True,
                         "dtype": dtype},
                        lambda b=batch, h=q_heads, kh=kv_heads, s=seq: (
                            torch.randn(b, h, s, d, device=device, dtype=tdtype),
                            torch.randn(b, kh, s, d, device=device, dtype=tdtype),
                            torch.randn(b, kh, s, d, device=device, dtype=tdtype)),
                        lambda q, k, v: sdpa(q, k, v, is_causal=True, enable_gqa=True),
                        batch * (2 * q_heads + 2 * kv_heads) * seq * d * esize)
        for size in grid.copy_bytes:
            add({"kind": "memcpy", "nbytes": 2 * size},
                lambda size=size: (torch.empty(size, dtype=torch.uint8, device=device),
                                   torch.empty(size, dtype=torch.uint8, device=device)),
                lambda dst, src: dst.copy_(src), 2 * size)
    records.extend(measure_all_reduce(torch, grid.all_reduce_bytes, log))
    return records


def measure_all_reduce(torch: Any, sizes: tuple[int, ...],
                       log: Callable[[str], None]) -> list[Record]:
    """All-reduce over every visible GPU from one process (torch.cuda.nccl), timed with
    wall clock between device-wide synchronizations; nothing with a single GPU."""
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return []
    import torch.cuda.nccl as nccl

    records: list[Record] = []
    name = torch.cuda.get_device_properties(0).name

    def sync() -> None:
        for i in range(gpus):
            torch.cuda.synchronize(i)

    for size in sizes:
        tensors = [torch.ones(size // 2, dtype=torch.bfloat16, device=f"cuda:{i}")
                   for i in range(gpus)]
        for _ in range(3):
            nccl.all_reduce(tensors)
        sync()
        inner = 20 if size <= 2**22 else 3
        samples = []
        for _ in range(9):
            t0 = time.perf_counter()
            for _ in range(inner):
                nccl.all_reduce(tensors)
            sync()
            samples.append((time.perf_counter() - t0) / inner)
        seconds = statistics.median(samples)
        records.append({"kind": "all_reduce", "gpus": gpus, "nbytes": tensors[0].numel() * 2,
                        "seconds": seconds, "device": name})
        log(f"all_reduce x{gpus}      {seconds * 1e6:10.2f} us  nbytes={size}")
        del tensors
    return records
