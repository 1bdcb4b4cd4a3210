"""Pick the best disaggregated and co-located configurations under the SLOs, and the
throughput-per-GPU against interactivity points of each for the Pareto plot."""

from __future__ import annotations

from dataclasses import dataclass

from cost_models.comm import Link
from planner.serve.pools import PoolOption
from planner.serve.rates import (
    Allocation,
    HybridBatch,
    PoolReplica,
    colocated_replicas,
    decode_requests_per_s,
    fluid_tokens_per_s_per_gpu,
    match_pools,
    prefill_requests_per_s,
    transfer_seconds,
)
from planner.serve.traffic import Traffic


@dataclass(frozen=True, kw_only=True)
class Slos:
    ttft_s: float
    ttl_s: float


@dataclass(frozen=True, kw_only=True)
class Disaggregated:
    prefill: PoolOption
    decode: PoolOption
    allocation: Allocation
    transfer_s: float
    kv_bytes_per_request: float
    output_tokens: float

    @property
    def ttft_s(self) -> float:
        return self.prefill.step_s + self.transfer_s

    @property
    def ttl_s(self) -> float:
        return self.decode.step_s

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.allocation.requests_per_s * self.output_tokens / self.allocation.gpus_used

    def to_dict(self) -> dict:
        return {
            "mode": "disaggregated",
            "requests_per_s": self.allocation.requests_per_s,
            "gpus_used": self.allocation.gpus_used,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "tokens_per_s_per_user": 1.0 / self.ttl_s,
            "ttft_s": self.ttft_s,
            "ttl_s": self.ttl_s,
            "kv_transfer": {"bytes_per_request": self.kv_bytes_per_request,
                            "seconds": self.transfer_s,
                            "link_utilization": self.allocation.transfer_utilization},
            "prefill_pool": dict(self.prefill.to_dict(),
                                 replicas=self.allocation.prefill_replicas,
                                 utilization=self.allocation.prefill_utilization),
            "decode_pool": dict(self.decode.to_dict(),
                                replicas=self.allocation.decode_replicas,
                                utilization=self.allocation.decode_utilization),
        }


@dataclass(frozen=True, kw_only=True)
class Colocated:
    option: PoolOption
    hybrid: HybridBatch
    replicas: int
    requests_per_s: float

    @property
    def gpus_used(self) -> int:
        return self.replicas * self.option.gpus

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.requests_per_s * self.hybrid.output_tokens / self.gpus_used

    def to_dict(self) -> dict:
        return {
            "mode": "colocated",
            "requests_per_s": self.requests_per_s,
            "gpus_used": self.gpus_used,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "tokens_per_s_per_user": 1.0 / self.hybrid.ttl_s,
            "ttft_s": self.hybrid.ttft_s,
            "ttl_s": self.hybrid.ttl_s,
            "replica": dict(self.option.to_dict(), replicas=self.replicas,
                            utilization=self.requests_per_s / (self.replicas * self.hybrid.requests_per_s)),
        }


def prefill_replica(option: PoolOption) -> PoolReplica:
    return PoolReplica(gpus=option.gpus,
                       requests_per_s=prefill_requests_per_s(option.workload.batch, option.step_s))


def decode_replica(option: PoolOption, traffic: Traffic) -> PoolReplica:
    return PoolReplica(gpus=option.gpus, requests_per_s=decode_requests_per_s(
        option.workload.batch, option.step_s, traffic.output_tokens))


def hybrid_of(option: PoolOption, traffic: Traffic) -> HybridBatch:
    return HybridBatch(chunk_tokens=option.extra["chunk_tokens"], decode_batch=option.decode_batch,
                       step_s=option.step_s, prompt_tokens=traffic.prompt_tokens,
                       output_tokens=traffic.output_tokens)


def _transfer_s(option: PoolOption, kv_bytes: float, link: Link) -> float:
    return transfer_seconds(kv_bytes, option.gpus, link.bytes_per_s, link.alpha_s)


def best_disaggregated(prefills: list[PoolOption], decodes: list[PoolOption], traffic: Traffic,
                       gpus: int, slos: Slos, link: Link, kv_bytes: float,
                       rate: float | None = None) -> Disaggregated | None:
    best: Disaggregated | None = None
    for p in prefills:
        transfer = _transfer_s(p, kv_bytes, link)
        if p.step_s + transfer > slos.ttft_s:
            continue
        for d in decodes:
            if d.step_s > slos.ttl_s or p.gpus + d.gpus > gpus:
                continue
            alloc = match_pools(prefill_replica(p), decode_replica(d, traffic), gpus, rate=rate,
                                link_bytes_per_s=link.bytes_per_s, kv_bytes_per_request=kv_bytes)
            if alloc is None:
                continue
            cand = Disaggregated(prefill=p, decode=d, allocation=alloc, transfer_s=transfer,
                                 kv_bytes_per_request=kv_bytes, output_tokens=traffic.output_tokens)
            if best is None or _key(cand.allocation.requests_per_s, cand.tokens_per_s_per_gpu) > _key(
                    best.allocation.requests_per_s, best.tokens_per_s_per_gpu):
                best = cand
    return best


def best_colocated(options: list[PoolOption], traffic: Traffic, gpus: int, slos: Slos,
                   rate: float | None = None) -> Colocated | None:
    best: Colocated | None = None
    for o in options:
        hybrid = hybrid_of(o, traffic)
        if hybrid.ttft_s > slos.ttft_s or hybrid.ttl_s > slos.ttl_s:
            continue
        n = colocated_replicas(hybrid, o.gpus, gpus, rate)
        if n is None:
            continue
        served = rate if rate is not None else n * hybrid.requests_per_s
        cand = Colocated(option=o, hybrid=hybrid, replicas=n, requests_per_s=served)
        if best is None or _key(served, cand.tokens_per_s_per_gpu) > _key(
                best.requests_per_s, best.tokens_per_s_per_gpu):
            best = cand
    return best


def _key(rate: float, tokens_per_s_per_gpu: float) -> tuple[float, float]:
    """Higher served rate first (equal when a target rate is given), then tokens/s per GPU."""
    return (float(f"{rate:.9g}"), float(f"{tokens_per_s_per_gpu:.9g}"))


@dataclass(frozen=True)
class ParetoPoint:
    mode: str
    tokens_per_s_per_user: float
    tokens_per_s_per_gpu: float
    label: str

    def to_dict(self) -> dict:
        return {"mode": self.mode, "tokens_per_s_per_user": self.tokens_per_s_per_user,
                "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu, "config": self.label}


def pareto_points(prefills: list[PoolOption], decodes: list[PoolOption], colocated: list[PoolOption],
                  traffic: Traffic, slos: Slos, link: Link, kv_bytes: float) -> list[ParetoPoint]:
    """Rate-matched (fluid) tokens/s per GPU at each decode speed: disaggregated points pair
    every decode replica with the most GPU-efficient prefill replica meeting the TTFT SLO;
    co-located points are every hybrid configuration meeting it."""
    points: list[ParetoPoint] = []
    ok_prefill = [p for p in prefills if p.step_s + _transfer_s(p, kv_bytes, link) <= slos.ttft_s]
    if ok_prefill:
        cheapest = min(ok_prefill, key=lambda p: p.gpus / prefill_replica(p).requests_per_s)
        for d in decodes:
            tpg = fluid_tokens_per_s_per_gpu(prefill_replica(cheapest), decode_replica(d, traffic),
                                             traffic.output_tokens)
            points.append(ParetoPoint("disaggregated", 1.0 / d.step_s, tpg,
                                      f"decode {d.gpus} GPUs B={d.workload.batch} {d.plan}"))
    for o in colocated:
        hybrid = hybrid_of(o, traffic)
        if hybrid.ttft_s > slos.ttft_s:
            continue
        tpg = hybrid.requests_per_s * traffic.output_tokens / o.gpus
        points.append(ParetoPoint("colocated", 1.0 / hybrid.ttl_s, tpg,
                                  f"{o.gpus} GPUs chunk={o.extra['chunk_tokens']} b={o.decode_batch} {o.plan}"))
    return points


def pareto_front(points: list[ParetoPoint]) -> list[ParetoPoint]:
    ordered = sorted(points, key=lambda p: (-p.tokens_per_s_per_user, -p.tokens_per_s_per_gpu))
    front, best = [], -1.0
    for p in ordered:
        if p.tokens_per_s_per_gpu > best:
            front.append(p)
            best = p.tokens_per_s_per_gpu
    return front
