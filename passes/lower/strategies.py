"""How each planner strategy is lowered: declared data read by the generic lowering.

A strategy's lowering says, for its mesh axes (the model group kvp×tp for all strategies
here; without Helix kvp has size 1), how weights
are split (`weights`), where the KV cache is split (`cache`) and how the residual stream is
laid out on entry and exit (from the plan's `layout_in`/`layout_out`). Everything else —
activation layouts inside the block, where collectives go — follows by layout propagation.
Adding a parallelism means adding an entry here (and, if it needs one, an op rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from ir.graph import Block, Graph, Op
from ir.layout import REPLICATE, LoweringError, Placement, shard

WEIGHT_RULES = ("replicate", "megatron", "vocab_rows", "helix", "experts", "experts_dispatch", "experts_tp")
CACHE_RULES = ("replicate", "heads", "batch", "helix", "cp")
STREAM_LAYOUTS = ("replicate", "shard_batch", "shard_seq")


@dataclass(frozen=True)
class StrategyLowering:
    """`weights`: replicate — every rank holds whole weights; megatron — a linear whose input
    is replicated is column-parallel (weight rows split), one whose input is split along its
    last dim is row-parallel (weight columns split, output Partial); vocab_rows — embedding
    tables (rows dividing the axis) and the `vocab`-row projection are split by rows; helix —
    column-parallel over tp only (Q/K/V for the rank's TPA head slice, the same on every kvp
    rank), row-parallel over every axis its input is split on (the output projection over
    all kvp×tp ranks). `cache`: which dim of the KV cache this block's ranks split (heads:
    the KV-head dim; batch: the batch dim; helix: KV heads over tp and the sequence over kvp,
    round-robin in blocks, see passes/lower/helix.py; cp: KV heads over tp and the cached
    prefix in contiguous slices of L over cp, see passes/lower/cp.py); experts — the stacked expert weights
    split by expert over the whole group (passes/lower/moe.py), the router (a linear with E
    output rows) replicated, other linears (shared experts) megatron; experts_dispatch — the
    stacked expert weights split by expert, every linear replicated (the stream is split by
    batch: router and shared experts run data parallel); experts_tp — as experts, but the
    experts split over kvp and each expert's FFN columns over tp (TP×EP).

    The strategy spreads its block over the model axes (kvp and tp, those of size > 1); a
    tensor split over both is nested kvp-major (as one group of kvp×tp ranks), except inside
    a Helix block, whose head splits are tp-major (the all-to-all over kvp splits each tp
    rank's heads further)."""

    name: str
    axis: str
    weights: str
    cache: str

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_RULES or self.cache not in CACHE_RULES:
            raise ValueError(f"bad strategy lowering {self}")

    def weight_placement(
        self,
        graph: Graph,
        block: Block,
        op: Op,
        weight: str,
        *,
        input_split_last: bool,
        axis_size: int,
        axis: str = "tp",
    ) -> Placement:
        """Placement on `self.axis` of `weight` read by `op`; `input_split_last` says the
        op's activation arrives split along its last (contracted) dim on this axis."""
        shape = graph.params[weight].shape if weight in graph.params else ()
        if self.weights in ("replicate", "experts_dispatch") or len(shape) != 2:
            return REPLICATE
        if self.weights == "vocab_rows":
            # Every lookup table of the block (token and learned-position tables alike, as
            # the planner's memory model assumes) and the vocab-sized projection.
            if op.target == "embedding":
                return shard(0) if shape[0] % axis_size == 0 else REPLICATE
            vocab = block.dims.get("vocab")
            return shard(0) if vocab and shape[0] == vocab else REPLICATE
        if op.target not in ("linear", "addmm"):
            return REPLICATE
        if self.weights in ("experts", "experts_tp") and shape[0] == block.dims.get("experts"):
            return REPLICATE
        # linear's weight is [out, in]; addmm's (GPT-2's Conv1D) is [in, out].
        rows, cols = (shard(0), shard(1)) if op.target == "linear" else (shard(1), shard(0))
        if input_split_last:
            return cols
        if "kv_lora_rank" in block.dims and shape[0] not in latent_head_rows(block):
            return REPLICATE
        if self.weights == "helix" and axis != "tp":
            return REPLICATE
        out_features = shape[0] if op.target == "linear" else shape[1]
        if out_features % axis_size:
            # Too few output features to split (Qwen2-MoE's one-column shared-expert gate):
            # the projection runs whole on every rank, on its replicated input.
            return REPLICATE
        return rows

    def split_axes(self, axes: tuple[str, ...]) -> tuple[str, ...]:
        """The active mesh axes this strategy splits weights over, outer first."""
        order = ("tp", "kvp") if self.weights == "helix" else ("kvp", "tp")
        return tuple(a for a in order if a in axes)


LOWERINGS: dict[str, StrategyLowering] = {
    s.name: s
    for s in (
        StrategyLowering(name="replicate", axis="tp", weights="replicate", cache="replicate"),
        StrategyLowering(name="dp", axis="tp", weights="replicate", cache="batch"),
        StrategyLowering(name="tp", axis="tp", weights="megatron", cache="heads"),
        StrategyLowering(name="tp_sp", axis="tp", weights="megatron", cache="heads"),
        StrategyLowering(name="vocab", axis="tp", weights="vocab_rows", cache="replicate"),
        StrategyLowering(name="helix", axis="tp", weights="helix", cache="helix"),
        # ring attention over cp (passes/lower/cp.py), heads over tp as in `tp`
        StrategyLowering(name="cp_pass_kv", axis="tp", weights="megatron", cache="cp"),
        StrategyLowering(name="cp_pass_q", axis="tp", weights="megatron", cache="cp"),
        StrategyLowering(name="ep", axis="tp", weights="experts", cache="replicate"),
        StrategyLowering(name="ep_dispatch", axis="tp", weights="experts_dispatch", cache="replicate"),
        StrategyLowering(name="tp_ep", axis="tp", weights="experts_tp", cache="replicate"),
    )
}


def latent_head_rows(block: Block) -> tuple[int, ...]:
    """Output widths of a latent (MLA) attention block's per-head projections — the query
    (heads × qk head dim) and the latent's up-projection (heads × (nope + v)); the low-rank
    down-projections are not split (their outputs are normalized and shared by all heads)."""
    d = block.dims
    heads, qk = d["q_heads"], d["head_dim"]
    nope = qk - d.get("qk_rope_head_dim", 0)
    return (heads * qk, heads * (nope + d.get("v_head_dim", nope)))


def lowering_for(strategy: str, block: str) -> StrategyLowering:
    try:
        return LOWERINGS[strategy]
    except KeyError:
        raise LoweringError(
            f"block {block!r} uses strategy {strategy!r}, which codegen cannot lower yet; "
            f"lowerable strategies: {sorted(LOWERINGS)}. Re-plan with --force to avoid it"
        ) from None


def check_stream_layout(name: str, block: str) -> str:
    if name not in STREAM_LAYOUTS:
        raise LoweringError(
            f"block {block!r} has activation layout {name!r}; codegen knows {STREAM_LAYOUTS}"
        )
    return name
