"""Helix: KV-parallel attention for long-context decode, with the FFN as TP over all GPUs.

Attention runs on N = KVP × TPA GPUs (mesh axes kvp and tp). The KV cache is split along the
sequence over the KVP ranks; each rank computes Q/K/V for its TPA head slice for the whole
batch and attends over its KV slice, producing partial outputs plus softmax statistics
(max, sum). One all-to-all over kvp regroups the partials by head; a log-sum-exp rescale
makes attention exact. The output projection (and the FFN after it, as plain `tp` over
kvp×tp) then uses all N GPUs, ending in an all-reduce. TPA divides the KV heads, so no KV
head is duplicated; for latent attention (MLA) K is effectively 1, so TPA = 1 and KVP = N.

With TPA = 1 this is context-parallel decode: the cache split along the sequence over N
ranks, every rank attending the new tokens' queries over its slice, one log-sum-exp merge,
new K/V appended round-robin; no cp strategy is offered for decode (strategies/cp.py says
why). Helix differs only in splitting the output projection and FFN over the N ranks.

HOP-B cuts the batch into `hopb` slices so the all-to-all of one slice overlaps the
attention of the next; each slice pays its own kernel launches and collective latency.

Cost terms per GPU (`helix_terms`), priced as the generated program runs them:
* attention over the fullest kvp rank's KV: B·kv_tokens_per_rank(L+T)·(K/TPA)·(d_k+d_v)
  elements read — it shrinks with every GPU; the QKV weights are read /TPA, the output
  projection /N;
* no query or append traffic: every kvp rank computes the queries and the new K/V of its
  TPA heads for the whole batch, and the owner of a new token's slot writes it locally;
* the all-to-all sends every partial output with its log-sum-exp in float32,
  B·T·(Q/TPA)·(d_v + 1)·4 bytes per rank, independent of L (`PARTIAL_BYTES`);
* the combine reads the KVP partials of its Q/N heads and writes the output,
  B·T·(Q/N)·(KVP·(d_v + 1)·4 + d_v·e) bytes;
* for MLA the combine then applies the value half of kv_b_proj to its Q/N heads' latent
  output (`mla_helix_combine`): a GEMM of 2·B·T·(Q/N)·r·v FLOPs reading (Q/N)·v·r weights,
  one per HOP-B slice; the key half is absorbed into every head's query before attention
  (B·T rows over Q·nope·r weights, priced with the QKV projections);
* the all-reduce after the output projection, B·T·H elements over kvp×tp.
"""

from __future__ import annotations

import math

from cost_models import KernelWork, sliced_overlap
from ir.graph import Block
from passes.parallelize.context import PlanContext
from passes.parallelize.pricing import PARTIAL_BYTES, Priced
from passes.parallelize.strategy import MODEL_AXES, REPLICATE, Strategy

HOPB_CHOICES = (1, 2, 4, 8)
# New tokens' K/V go to one kvp rank at a time, round-robin in blocks of this many tokens
# (plan extra `append_block`; the lowering's default too).
DEFAULT_APPEND_BLOCK = 16


def kv_tokens_per_rank(tokens: int, kvp: int, append_block: int = DEFAULT_APPEND_BLOCK) -> int:
    """KV slots the fullest kvp rank holds for a sequence of `tokens`: ranks take blocks of
    `append_block` tokens round-robin, so rank 0 holds ⌈⌈tokens/ab⌉/KVP⌉ blocks (the last one
    possibly partial). Larger blocks unbalance short sequences; at 1M tokens it is ≈ tokens/KVP."""
    if tokens <= 0:
        return 0
    blocks = math.ceil(tokens / append_block)
    full_rounds, extra = divmod(blocks, kvp)
    # rank 0 holds full_rounds blocks plus one more if any block is left over; the last block
    # of the sequence is partial when tokens do not divide append_block
    held = full_rounds + (1 if extra else 0)
    last_partial = tokens - (blocks - 1) * append_block
    last_on_rank0 = (blocks - 1) % kvp == 0
    return held * append_block - (append_block - last_partial if last_on_rank0 else 0)


def _split_params(block: Block) -> tuple[float, float]:
    """(params held before the all-to-all, params after it): QKV (for MLA the query and latent
    projections and the whole kv_b_proj, which every rank holds: its key half is absorbed
    into every head's query, its value half is applied to this rank's heads after the
    combine, `value_up_params`) vs the output projection, which Helix splits over all N GPUs."""
    d = block.dims
    value_dim = d.get("v_head_dim", d.get("head_dim", 0))
    after = d["q_heads"] * value_dim * d["hidden"]
    before = max(0.0, block.param_count - after)
    return before, float(after)


def value_up_params(block: Block) -> float:
    """The value half of MLA's kv_b_proj, Q·v·r (0 for other attention): held whole on every
    rank, but multiplied after the all-to-all, for this rank's Q/N heads only."""
    d = block.dims
    if "kv_lora_rank" not in d:
        return 0.0
    return float(d["q_heads"] * d.get("v_head_dim", d["head_dim"]) * d["kv_lora_rank"])


def _value_up_work(block: Block, ctx: PlanContext, rows: int, heads: int) -> KernelWork:
    """`mla_helix_combine`'s einsum: [rows, heads, r] latent outputs times [heads, v, r]."""
    d = block.dims
    rank, value = d["kv_lora_rank"], d.get("v_head_dim", d["head_dim"])
    return KernelWork(
        kind="gemm", flops=2.0 * rows * heads * rank * value,
        nbytes=heads * value * rank * ctx.weight_bytes + rows * heads * (rank + value) * ctx.act_bytes,
        dtype=ctx.workload.weight_dtype,
    )


def helix_requirements(block: Block, ctx: PlanContext) -> str | None:
    kvp, tpa = ctx.mesh.size("kvp"), ctx.mesh.size("tp")
    d = block.dims
    if kvp == 1:
        return "helix needs a kvp axis (size 1 on this mesh)"
    if block.traits.get("latent_one_head"):
        return (
            "this latent attention caches its latent as one KV head and expands per-head K/V "
            "from it every step (transformers' DeepSeek-V3 form); helix is lowered for the "
            "absorbed form of the model files (examples/deepseek.py) only"
        )
    if not block.traits.get("sdpa", 1):
        return ("helix replaces one scaled_dot_product_attention; this block computes attention "
                "eagerly (matmul, softmax, matmul)")
    if "kv_lora_rank" in d:
        if tpa != 1:
            return f"latent attention has one shared KV head, so helix needs tpa=1 (mesh tp={tpa})"
    else:
        if d["kv_heads"] % tpa:
            return f"kv_heads={d['kv_heads']} is not divisible by tpa={tpa} (KV would duplicate)"
    n = kvp * tpa
    if d["q_heads"] % n:
        return f"q_heads={d['q_heads']} is not divisible by kvp×tpa={n} (output projection)"
    return None


def _attention_s(block: Block, ctx: PlanContext, batch: int, append_block: int) -> float:
    d = block.dims
    kvp, tpa = ctx.mesh.size("kvp"), ctx.mesh.size("tp")
    wl = ctx.workload
    kv_len = kv_tokens_per_rank(wl.context + wl.seq, kvp, append_block)
    if "kv_lora_rank" in d:
        shape = dict(
            q_heads=d["q_heads"], kv_heads=1,
            head_dim=d["kv_lora_rank"] + d.get("qk_rope_head_dim", 0),
            v_head_dim=d["kv_lora_rank"], latent_kv=True,
        )
    else:
        shape = dict(
            q_heads=d["q_heads"] // tpa, kv_heads=d["kv_heads"] // tpa,
            head_dim=d["head_dim"], v_head_dim=d.get("v_head_dim"),
        )
    act = wl.act_dtype if wl.act_dtype != "fp32" else "fp32"
    return ctx.cost.attention_decode(
        batch=batch, kv_len=kv_len, q_len=wl.seq, dtype=act, kv_dtype=wl.kv_dtype, **shape
    )




def _value_dim(block: Block) -> int:
    """The width of one head's partial output: the latent for MLA (the absorbed form
    attends in the latent space), else the value head dim."""
    d = block.dims
    return d["kv_lora_rank"] if "kv_lora_rank" in d else d.get("v_head_dim", d["head_dim"])


def helix_terms(
    block: Block, ctx: PlanContext, *, hopb: int = 1, append_block: int = DEFAULT_APPEND_BLOCK
) -> dict[str, float]:
    """The per-step quantities of Helix attention on one GPU (module docstring): the KV slots
    the fullest kvp rank attends over, per-slice attention and all-to-all (bytes and
    seconds), the combine, the all-reduce. Exposed for the report and tests."""
    wl = ctx.workload
    kvp, tpa = ctx.mesh.size("kvp"), ctx.mesh.size("tp")
    batch = ctx.replica_batch()
    rows = batch * wl.seq
    slice_batch = math.ceil(batch / hopb)
    value_dim = _value_dim(block)
    q_heads = block.dims["q_heads"]
    partials = slice_batch * wl.seq * (q_heads // tpa) * (value_dim + 1) * PARTIAL_BYTES
    combine = rows * (q_heads // (kvp * tpa)) * (kvp * (value_dim + 1) * PARTIAL_BYTES + value_dim * ctx.act_bytes)
    all_reduce = rows * block.dims["hidden"] * ctx.act_bytes
    value_up = {"value_up_flops": 0.0, "value_up_bytes": 0.0, "value_up_s": 0.0}
    if "kv_lora_rank" in block.dims:
        work = _value_up_work(block, ctx, slice_batch * wl.seq, q_heads // (kvp * tpa))
        value_up = {"value_up_flops": hopb * work.flops, "value_up_bytes": hopb * work.nbytes,
                    "value_up_s": hopb * ctx.cost.kernel(work)}
    return {
        "kv_tokens": float(kv_tokens_per_rank(wl.context + wl.seq, kvp, append_block)),
        "slice_attention_s": _attention_s(block, ctx, slice_batch, append_block),
        "slice_partials_bytes": partials,
        "slice_all_to_all_s": ctx.collective_s("all_to_all", partials, ("kvp",)),
        "combine_bytes": combine,
        "combine_s": ctx.cost.elementwise(combine),
        **value_up,
        "all_reduce_bytes": all_reduce,
        "all_reduce_s": ctx.collective_s("all_reduce", all_reduce, MODEL_AXES),
    }


def price_helix(
    block: Block, ctx: PlanContext, *, hopb: int = 1, append_block: int = DEFAULT_APPEND_BLOCK
) -> Priced:
    wl = ctx.workload
    kvp, tpa = ctx.mesh.size("kvp"), ctx.mesh.size("tp")
    n = kvp * tpa
    batch = ctx.replica_batch()
    rows = batch * wl.seq
    hidden = block.dims["hidden"]
    before, after = _split_params(block)
    w = ctx.weight_bytes

    def gemm(params: float) -> float:
        width = params / hidden
        return ctx.cost.kernel(KernelWork(
            kind="gemm", flops=2.0 * rows * params,
            nbytes=params * w + rows * (hidden + width) * ctx.act_bytes,
            dtype=wl.weight_dtype,
        ))

    qkv_s = gemm((before - value_up_params(block)) / tpa)
    post_s = gemm(after / n)
    terms = helix_terms(block, ctx, hopb=hopb, append_block=append_block)
    timeline = sliced_overlap([terms["slice_attention_s"]] * hopb, [terms["slice_all_to_all_s"]] * hopb)
    compute = qkv_s + timeline.compute_s + terms["combine_s"] + terms["value_up_s"] + post_s
    exposed = timeline.exposed_comm_s + terms["all_reduce_s"]
    comm = {
        "all_to_all:kvp": terms["slice_all_to_all_s"] * hopb,
        f"all_reduce:{ctx.axes_label(MODEL_AXES)}": terms["all_reduce_s"],
    }
    d = block.dims
    if "kv_lora_rank" in d:
        per_token = d["kv_lora_rank"] + d.get("qk_rope_head_dim", 0)
    else:
        per_token = d["kv_heads"] // tpa * (d["head_dim"] + d.get("v_head_dim", d["head_dim"]))
    memory = {
        "weights": (before / tpa + after / n) * w,
        "kv_cache": batch * terms["kv_tokens"] * per_token * ctx.kv_bytes,
    }
    return Priced(compute + exposed, compute, {k: v for k, v in comm.items() if v}, exposed, memory)


def explain_helix(block: Block, ctx: PlanContext, extras: dict[str, int]) -> list[str]:
    """Where a Helix step's time goes under the plan's HOP-B slicing and append block, and at
    tpa=1 that this is the decode form of context parallelism."""
    wl = ctx.workload
    kvp, tpa = ctx.mesh.size("kvp"), ctx.mesh.size("tp")
    hopb = extras.get("hopb", 1)
    append_block = extras.get("append_block", DEFAULT_APPEND_BLOCK)
    terms = helix_terms(block, ctx, hopb=hopb, append_block=append_block)
    us = 1e6
    slices = f" per batch slice (hopb={hopb})" if hopb > 1 else ""
    lines = [
        f"KV split along the sequence: the fullest of kvp={kvp} ranks holds "
        f"{terms['kv_tokens']:.0f} of {wl.context + wl.seq} slots (blocks of {append_block} "
        f"round-robin); attention over them {terms['slice_attention_s'] * us:.1f} µs{slices}",
        f"all-to-all of float32 partials over kvp: {terms['slice_partials_bytes'] / 1024:.1f} KiB per rank, "
        f"{terms['slice_all_to_all_s'] * us:.1f} µs{slices}; combine {terms['combine_s'] * us:.1f} µs; "
        f"all-reduce over {ctx.axes_label(MODEL_AXES)} {terms['all_reduce_s'] * us:.1f} µs",
    ]
    if terms["value_up_flops"]:
        lines.append(
            f"latent attention: the combine applies kv_b_proj's value half to this rank's "
            f"{block.dims['q_heads'] // (kvp * tpa)} heads, {terms['value_up_s'] * us:.1f} µs"
        )
    if tpa == 1:
        lines.append(
            "tpa=1: this is context-parallel decode (no cp strategy is offered for decode: the ring "
            "would pad the new tokens to 2·cp); helix also runs the output projection and FFN over "
            "the kvp ranks"
        )
    return lines


def helix_variants(block: Block, ctx: PlanContext) -> list[dict[str, int]]:
    batch = ctx.replica_batch()
    return [{"hopb": h} for h in HOPB_CHOICES if h <= batch]


HELIX = Strategy(
    name="helix",
    kinds=frozenset({"attention"}),
    axes=("kvp", "tp"),
    summary="KV split over kvp, heads over tpa; all-to-all + LSE combine; output proj TP over N",
    layout_in=REPLICATE,
    layout_out=REPLICATE,
    requirements=(helix_requirements,),
    price=price_helix,
    default=True,
    workloads=frozenset({"decode"}),
    workload_hint=(
        "it attends a prefill's new tokens on kvp rank 0 only; split a long prefill's "
        "sequence with cp_pass_kv or cp_pass_q (context parallelism)"
    ),
    variants=helix_variants,
    explain=explain_helix,
)
