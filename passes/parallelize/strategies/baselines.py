"""Comparison baselines for Helix (priced, not lowered): what serving systems do without it.

* `tp_kvdup` — Megatron TP of attention over more ranks than there are KV heads (N > K): the
  query heads split N ways, but each rank still needs a whole KV head, so every KV head (its
  projection weights and its cache) is duplicated on N/K ranks. The KV read per rank stops
  shrinking at N = K — the wall Helix removes by splitting the sequence instead.
* `tp_attn_group` — "KV parallelism tied to TP": the FFN runs TP over the attention's head
  group only (mesh axis tp = TPA), replicated over the kvp ranks, as KV-parallel systems
  without Helix's re-layout do; the kvp ranks duplicate the FFN's weight reads.

Neither has a lowering, so neither is offered by default (`--strategies` names them, or
`--allow-unverified`); benchmarks/helix_paper.py uses them as the non-Helix baseline.
"""

from __future__ import annotations

import dataclasses

from ir.graph import Block
from passes.parallelize.context import PlanContext
from passes.parallelize.pricing import Priced, price, projection_work
from passes.parallelize.strategies.tp import hidden_bytes
from passes.parallelize.strategy import (
    MODEL_AXES,
    REPLICATE,
    Collective,
    Strategy,
    divides,
    not_latent,
)


def _kvdup_requirements(block: Block, ctx: PlanContext) -> str | None:
    n = ctx.group_size(MODEL_AXES)
    for check in (not_latent(), divides("q_heads")):
        reason = check(block, ctx)
        if reason:
            return reason
    k = block.dims["kv_heads"]
    if n <= k:
        return f"kv_heads={k} >= tp={n}: plain tp splits KV heads without duplicating them"
    if n % k:
        return f"tp={n} is not a multiple of kv_heads={k} (each KV head must go to N/K ranks)"
    return None


def _kv_params(block: Block) -> float:
    d = block.dims
    return float(d["kv_heads"] * (d["head_dim"] + d.get("v_head_dim", d["head_dim"])) * d["hidden"])


def price_tp_kvdup(block: Block, ctx: PlanContext) -> Priced:
    """Generic TP pricing (the attention kernel and cache already count one KV head per rank
    once N >= K), plus the duplicated K/V projection: a rank reads 1/K of it, not 1/N."""
    base = price(block, dataclasses.replace(TP_KVDUP, price=None), ctx)
    n, k = ctx.group_size(MODEL_AXES), block.dims["kv_heads"]
    extra_params = _kv_params(block) * (1 / k - 1 / n)
    rows = ctx.replica_batch() * ctx.workload.seq
    split = block.param_count / n
    hidden = block.dims["hidden"]
    extra_s = ctx.cost.kernel(projection_work(ctx, rows, split + extra_params, hidden)) - ctx.cost.kernel(
        projection_work(ctx, rows, split, hidden)
    )
    memory = dict(base.memory)
    memory["weights"] = memory.get("weights", 0.0) + extra_params * ctx.weight_bytes
    factor = 3.0 if ctx.is_train else 1.0
    return dataclasses.replace(
        base,
        time_s=base.time_s + factor * extra_s,
        compute_s=base.compute_s + factor * extra_s,
        memory=memory,
    )


TP_KVDUP = Strategy(
    name="tp_kvdup",
    kinds=frozenset({"attention"}),
    axes=MODEL_AXES,
    summary="query heads over N > KV heads; each KV head (weights + cache) duplicated N/K times",
    layout_in=REPLICATE,
    layout_out=REPLICATE,
    splits_weights=True,
    collectives=(Collective("all_reduce", MODEL_AXES, "block output", hidden_bytes),),
    requirements=(_kvdup_requirements,),
    price=price_tp_kvdup,
    default=False,
)


def _attn_group_requirements(block: Block, ctx: PlanContext) -> str | None:
    if ctx.mesh.size("kvp") == 1:
        return "tp_attn_group is TP over the attention's tp axis beside a kvp axis (kvp=1 here: use tp)"
    return divides("ffn", ("tp",))(block, ctx)


TP_ATTN_GROUP = Strategy(
    name="tp_attn_group",
    kinds=frozenset({"mlp", "moe"}),
    axes=("tp",),
    summary="FFN TP over the attention head group (tp) only, replicated over kvp",
    layout_in=REPLICATE,
    layout_out=REPLICATE,
    splits_weights=True,
    collectives=(Collective("all_reduce", ("tp",), "block output", hidden_bytes),),
    requirements=(_attn_group_requirements,),
    default=False,
    workloads=frozenset({"decode"}),
)
