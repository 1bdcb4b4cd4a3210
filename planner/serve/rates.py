"""The rate arithmetic of serving, free of any planning: how many requests per second a
pool replica sustains, how pools are sized so neither idles, and what a co-located replica
running chunked prefill (SARATHI-style hybrid batches) sustains.

Steady state, fluid model: a prefill replica finishes `batch` prompts every `step_s`; a
decode replica keeps `batch` sequences in flight and advances each by one token every
`step_s`, so a request that generates `output_tokens` tokens occupies one slot for
`output_tokens · step_s` seconds. Queueing delay is not modelled (each stage is priced at
its service time), so the SLOs bound service times, not tail latencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ir.errors import InputError


@dataclass(frozen=True, kw_only=True)
class PoolReplica:
    """One plan instance of a pool: `gpus` GPUs serving `requests_per_s`."""

    gpus: int
    requests_per_s: float

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.requests_per_s <= 0:
            raise InputError(
                f"a pool replica needs >= 1 GPU and a positive rate, got {self.gpus} GPUs, "
                f"{self.requests_per_s} req/s"
            )


def prefill_requests_per_s(batch: int, step_s: float) -> float:
    """A prefill replica finishes `batch` prompts per step."""
    return batch / step_s


def decode_requests_per_s(batch: int, step_s: float, output_tokens: float) -> float:
    """A decode replica holds `batch` sequences; each leaves after `output_tokens` steps."""
    return batch / (step_s * output_tokens)


def transfer_requests_per_s(gpus: int, link_bytes_per_s: float, kv_bytes_per_request: float) -> float:
    """KV-cache hand-off capacity of `gpus` prefill GPUs, each sending over its own link."""
    if kv_bytes_per_request <= 0:
        return math.inf
    return gpus * link_bytes_per_s / kv_bytes_per_request


def transfer_seconds(kv_bytes_per_request: float, gpus: int, link_bytes_per_s: float,
                     link_latency_s: float) -> float:
    """Time to move one request's KV cache when each of `gpus` senders ships its share."""
    return link_latency_s + kv_bytes_per_request / gpus / link_bytes_per_s


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """Pool sizes and the rate they serve; `*_utilization` is the busy share of each pool."""

    prefill_replicas: int
    decode_replicas: int
    requests_per_s: float
    gpus_used: int
    prefill_utilization: float
    decode_utilization: float
    transfer_utilization: float

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _allocation(n_p: int, n_d: int, prefill: PoolReplica, decode: PoolReplica, rate: float,
                link_bytes_per_s: float, kv_bytes: float) -> Allocation:
    prefill_cap = n_p * prefill.requests_per_s
    decode_cap = n_d * decode.requests_per_s
    link_cap = transfer_requests_per_s(n_p * prefill.gpus, link_bytes_per_s, kv_bytes)
    return Allocation(
        prefill_replicas=n_p,
        decode_replicas=n_d,
        requests_per_s=rate,
        gpus_used=n_p * prefill.gpus + n_d * decode.gpus,
        prefill_utilization=rate / prefill_cap,
        decode_utilization=rate / decode_cap,
        transfer_utilization=0.0 if math.isinf(link_cap) else rate / link_cap,
    )


def match_pools(
    prefill: PoolReplica,
    decode: PoolReplica,
    gpus: int,
    *,
    rate: float | None = None,
    link_bytes_per_s: float = math.inf,
    kv_bytes_per_request: float = 0.0,
) -> Allocation | None:
    """Size the prefill and decode pools on at most `gpus` GPUs.

    Without `rate`: the split (n_p, n_d) maximizing the served rate
    min(n_p·r_p, n_d·r_d, KV link capacity), fewest GPUs among equals. With `rate`: the
    fewest replicas of each pool that carry it. None when no split fits (both pools need at
    least one replica)."""
    link_bw = link_bytes_per_s
    if rate is not None:
        n_p = math.ceil(rate / prefill.requests_per_s - 1e-12)
        n_d = math.ceil(rate / decode.requests_per_s - 1e-12)
        if kv_bytes_per_request > 0 and not math.isinf(link_bw):
            n_p = max(n_p, math.ceil(rate * kv_bytes_per_request / (link_bw * prefill.gpus) - 1e-12))
        n_p, n_d = max(n_p, 1), max(n_d, 1)
        if n_p * prefill.gpus + n_d * decode.gpus > gpus:
            return None
        return _allocation(n_p, n_d, prefill, decode, rate, link_bw, kv_bytes_per_request)
    best: Allocation | None = None
    for n_p in range(1, (gpus - decode.gpus) // prefill.gpus + 1):
        n_d = (gpus - n_p * prefill.gpus) // decode.gpus
        if n_d < 1:
            break
        served = min(
            n_p * prefill.requests_per_s,
            n_d * decode.requests_per_s,
            transfer_requests_per_s(n_p * prefill.gpus, link_bw, kv_bytes_per_request),
        )
        # Give back decode replicas the rate does not need (they would idle).
        n_d = max(1, math.ceil(served / decode.requests_per_s - 1e-12))
        candidate = _allocation(n_p, n_d, prefill, decode, served, link_bw, kv_bytes_per_request)
        if best is None or (served, -candidate.gpus_used) > (best.requests_per_s, -best.gpus_used):
            best = candidate
    return best


def fluid_tokens_per_s_per_gpu(prefill: PoolReplica, decode: PoolReplica, output_tokens: float) -> float:
    """Output tokens/s per GPU when pools are sized in exact proportion (no rounding): a
    request costs gpus/rate GPU-seconds in each pool."""
    gpu_s_per_request = prefill.gpus / prefill.requests_per_s + decode.gpus / decode.requests_per_s
    return output_tokens / gpu_s_per_request


@dataclass(frozen=True, kw_only=True)
class HybridBatch:
    """One co-located iteration: `chunk_tokens` prompt tokens plus `decode_batch` decodes,
    taking `step_s`. Rates are per replica."""

    chunk_tokens: int
    decode_batch: int
    step_s: float
    prompt_tokens: float
    output_tokens: float

    @property
    def requests_per_s(self) -> float:
        """Prompt intake C/(P·t) and decode drain b/(O·t); the smaller binds."""
        intake = self.chunk_tokens / (self.prompt_tokens * self.step_s)
        drain = self.decode_batch / (self.output_tokens * self.step_s)
        return min(intake, drain)

    @property
    def ttft_s(self) -> float:
        """A prompt is spread over ceil(P/C) iterations."""
        return math.ceil(self.prompt_tokens / self.chunk_tokens - 1e-12) * self.step_s

    @property
    def ttl_s(self) -> float:
        """Every decode advances once per iteration."""
        return self.step_s


def balanced_decode_batch(chunk_tokens: int, prompt_tokens: float, output_tokens: float) -> int:
    """Decodes per iteration that the prompt intake keeps busy: b = C·O/P (>= 1), so that
    intake C/(P·t) equals drain b/(O·t)."""
    return max(1, round(chunk_tokens * output_tokens / prompt_tokens))


def colocated_replicas(hybrid: HybridBatch, replica_gpus: int, gpus: int,
                       rate: float | None = None) -> int | None:
    """Replicas needed for `rate` (or all that fit when no rate); None when they do not fit."""
    fit = gpus // replica_gpus
    if rate is None:
        return fit or None
    need = max(1, math.ceil(rate / hybrid.requests_per_s - 1e-12))
    return need if need <= fit else None
