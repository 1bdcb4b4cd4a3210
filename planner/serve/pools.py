"""Candidate configurations of each serving pool, priced by the planner's own search: a
prefill replica, a decode replica and a co-located (chunked-prefill) replica are each the
optimal ILP plan for their workload on a given GPU count, so every strategy the planner
offers (and any added later) is considered."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from cost_models import CostModel, HardwareSpec
from cost_models.comm import Link, scaleout_link, scaleup_link
from ir.errors import InfeasiblePlanError
from ir.graph import Graph
from ir.mesh import Mesh
from ir.workload import Workload
from passes.parallelize.context import PlanContext
from passes.parallelize.pricing import LocalSizes, attention_kernel_s, kv_cache_bytes, local_sizes
from passes.parallelize.search import SearchResult, search
from passes.parallelize.strategies import BY_NAME, DEFAULT_STRATEGIES
from planner.serve.traffic import Traffic
from planner.sweep import summarize_result


@dataclass(frozen=True, kw_only=True)
class PlanSettings:
    """What every pool plan shares: hardware, dtypes and the strategies offered."""

    hardware: HardwareSpec
    strategies: frozenset[str] = DEFAULT_STRATEGIES
    verified_only: bool = True
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    act_dtype: str = "bf16"
    time_limit_s: float = 30.0

    def workload(self, kind: str, batch: int, seq: int, context: int) -> Workload:
        return Workload(kind=kind, batch=batch, seq=seq, context=context,
                        weight_dtype=self.weight_dtype, kv_dtype=self.kv_dtype,
                        act_dtype=self.act_dtype)

    def search(self, graph: Graph, workload: Workload, gpus: int) -> SearchResult | None:
        try:
            return search(graph, workload, self.hardware, gpus, strategies=self.strategies,
                          top_k=1, time_limit_s=self.time_limit_s,
                          verified_only=self.verified_only)
        except InfeasiblePlanError:
            return None


@dataclass(frozen=True, kw_only=True)
class PoolOption:
    """One replica configuration: `gpus` GPUs running `workload` in `step_s` per step.
    For co-located replicas `decode_batch` decodes ride in each prefill chunk."""

    kind: str
    gpus: int
    workload: Workload
    step_s: float
    plan: str
    memory_bytes: float
    decode_batch: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "gpus": self.gpus,
            "batch": self.workload.batch,
            "seq": self.workload.seq,
            "context": self.workload.context,
            "decode_batch": self.decode_batch,
            "step_s": self.step_s,
            "plan": self.plan,
            "memory_gib_per_gpu": self.memory_bytes / 2**30,
            **self.extra,
        }


def replica_sizes(gpus: int) -> list[int]:
    """GPU counts a replica may take: powers of two up to the budget, and the budget."""
    sizes = [1 << i for i in range(gpus.bit_length()) if (1 << i) <= gpus]
    return sorted(set(sizes) | {gpus})


def powers_of_two(low: int, high: int) -> list[int]:
    out, v = [], low
    while v <= high:
        out.append(v)
        v *= 2
    return out


def kv_bytes_per_request(graph: Graph, settings: PlanSettings, tokens: int) -> float:
    """Whole-model KV cache of one sequence of `tokens` tokens (what a prefill pool hands
    to a decode pool)."""
    wl = settings.workload("prefill", 1, max(1, tokens), 0)
    ctx = PlanContext(workload=wl, cost=CostModel(hardware=settings.hardware), mesh=Mesh.of())
    one = LocalSizes(batch=1, tokens=tokens, context=0, weight_split=1, norm_token_split=1)
    return sum(kv_cache_bytes(b, ctx, one) for b in graph.blocks if b.kind == "attention")


def transfer_link(hw: HardwareSpec, gpus: int) -> Link:
    """Pools inside one scale-up domain hand KV over NVLink; otherwise over the NICs."""
    return scaleup_link(hw) if gpus <= hw.scaleup_domain_gpus else scaleout_link(hw)


def prefill_options(graph: Graph, settings: PlanSettings, traffic: Traffic, sizes: list[int],
                    batches: list[int]) -> list[PoolOption]:
    prompt = round(traffic.prompt_tokens)
    out = []
    for gpus in sizes:
        for batch in batches:
            wl = settings.workload("prefill", batch, prompt, 0)
            result = settings.search(graph, wl, gpus)
            if result is None:
                continue
            out.append(_option("prefill", gpus, wl, result))
    return out


def decode_options(graph: Graph, settings: PlanSettings, traffic: Traffic, sizes: list[int],
                   max_batch: int) -> list[PoolOption]:
    """Batches doubling from 1 to `max_batch`. A batch that does not fit does not end the
    scan: a larger one may divide over a data-parallel split that shards the KV cache."""
    out = []
    for gpus in sizes:
        for batch in powers_of_two(1, max_batch):
            wl = settings.workload("decode", batch, 1, traffic.decode_context_tokens)
            result = settings.search(graph, wl, gpus)
            if result is not None:
                out.append(_option("decode", gpus, wl, result))
    return out


def colocated_options(graph: Graph, settings: PlanSettings, traffic: Traffic, sizes: list[int],
                      chunks: list[int]) -> list[PoolOption]:
    """SARATHI-style hybrid iterations: a prefill chunk of C prompt tokens with the b
    decodes that keep intake and drain balanced (b = C·O/P).

    An iteration is priced as the optimal plan of a prefill of C + b new tokens (the decode
    tokens ride in the chunk's GEMMs and collectives: the piggybacking) after the chunk's
    mean cached prefix, plus, under that same plan's attention layouts, the decode attention
    of b sequences over the mean decode context. The b decode rows also pass through the
    chunk's causal attention, a small overcount. Memory adds the b sequences' KV cache."""
    from planner.serve.rates import balanced_decode_batch

    prompt = round(traffic.prompt_tokens)
    context = traffic.decode_context_tokens
    out = []
    for gpus in sizes:
        for chunk in chunks:
            decodes = balanced_decode_batch(chunk, traffic.prompt_tokens, traffic.output_tokens)
            prefix = max(0, (prompt - chunk) // 2)
            wl = settings.workload("prefill", 1, chunk + decodes, prefix)
            result = settings.search(graph, wl, gpus)
            if result is None:
                continue
            attn_s, kv_bytes = _decode_attention(graph, settings, result, decodes, context)
            memory = result.best.solution.memory_bytes + kv_bytes
            if memory > result.capacity_bytes:
                continue
            base = _option("colocated", gpus, wl, result)
            out.append(PoolOption(
                kind="colocated", gpus=gpus, workload=wl,
                step_s=base.step_s + attn_s, plan=base.plan, memory_bytes=memory,
                decode_batch=decodes,
                extra={"chunk_tokens": chunk, "chunk_step_s": base.step_s,
                       "decode_attention_s": attn_s},
            ))
    return out


def _decode_attention(graph: Graph, settings: PlanSettings, result: SearchResult,
                      decodes: int, context: int) -> tuple[float, float]:
    """Decode attention time and KV bytes per GPU of `decodes` sequences under the chunk
    plan's attention strategies."""
    best = result.best
    ctx = PlanContext(workload=settings.workload("decode", decodes, 1, context),
                      cost=best.built.ctx.cost, mesh=best.mesh)
    spread = "dp" in settings.strategies
    seconds = kv = 0.0
    for block in graph.blocks:
        if block.kind != "attention":
            continue
        name, _extras = best.built.meaning[best.solution.assignment[block.name]]
        strategy = BY_NAME[name]
        sizes = local_sizes(strategy, ctx)
        if spread and not strategy.splits_weights and not strategy.splits_batch:
            # Full attention weights on every GPU of the group: its decodes need not be
            # repeated on each, they are spread over the group as `dp` does (attention-DP).
            group = BY_NAME["dp"].degree(ctx)
            sizes = replace(sizes, batch=math.ceil(decodes / group))
        seconds += attention_kernel_s(block, ctx, sizes)
        kv += kv_cache_bytes(block, ctx, sizes)
    return seconds, kv


def _option(kind: str, gpus: int, wl: Workload, result: SearchResult) -> PoolOption:
    return PoolOption(kind=kind, gpus=gpus, workload=wl, step_s=result.best.solution.objective_s,
                      plan=summarize_result(result), memory_bytes=result.best.solution.memory_bytes)
