"""Expert parallelism: the distributed kernel that replaces a MoE block's expert computation.

The model computes its routed experts however it likes (the examples: every expert densely
on every token, combined with [N, E] routing weights that are zero off the top-k). The
lowering matches
* the router input tokens `x` [N, H] (the tokens the stacked expert weights are applied to),
* the top-k over the E router scores (input width E, k = the block's top_k): its indices
  [N, k] are the experts of each token,
* the routing weights [N, k] (the values scattered into the dense [N, E] weights),
* the stacked SwiGLU expert weights `gate_up_proj` [E, 2F, H] (gate rows, then up rows)
  and `down_proj` [E, H, F],
* the routed output: the first [N, H] value computed from the expert weights,
and replaces every op between (the dense expert matmuls, the scatter into [N, E]) with
`moe_experts`, which computes only each token's top-k experts, exactly: no token is dropped
and there is no capacity limit (an expert gets as many rows as tokens chose it).

`ep` splits the experts over the model group (kvp×tp ranks, kvp-major): rank r holds experts
[r·E/n, (r+1)·E/n). The residual stream stays replicated; every rank routes every token,
keeps the (token, expert) pairs of its own experts and returns a Partial [N, H] — the sum
over ranks (one all-reduce, merged with the shared experts' row-parallel reduction where the
block has them) is the block output. The router runs replicated; shared experts are
Megatron TP like a dense MLP.

`ep_dispatch` (attention data parallel + EP): the residual stream arrives split by batch over the
model group; router and shared experts run on the rank's own tokens (weights replicated),
`moe_dispatch` sends each token once to every distinct rank holding one of its experts
(all_to_all_single, counts exchanged first, uneven splits), runs the local experts and
returns the weighted outputs by a second all-to-all; the stream leaves split by batch.

A `replicate` MoE block runs the same kernel over all experts
(index 0, no split): exact on a batch split over dp too, where the dense expert einsums
have no layout rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from ir.graph import Op, ValueRef
from ir.layout import PARTIAL, REPLICATE, Layout, LoweringError, shard
from ir.rank_program import AxisRank, Compute
from passes.lower.builder import JOINED_MODEL_AXIS, same


@dataclass(frozen=True)
class MoePattern:
    tokens: str
    expert_ids: str
    routing_weights: str
    gate_up: str
    down: str
    routed: Op
    absorbed: frozenset[str]


def _param_named(cx, suffix: str) -> str:
    found = sorted(
        {v for op in cx.ops for v in op.inputs if cx.is_param(v) and cx.graph.params[v].name.endswith(suffix)}
    )
    if len(found) != 1:
        raise LoweringError(
            f"block {cx.block.name!r}: expert parallelism needs one stacked expert weight named "
            f"*{suffix} (found {len(found)}); experts must be stored as gate_up_proj [E, 2F, H] and "
            "down_proj [E, H, F], as in transformers 5 and examples/mixtral.py"
        )
    return found[0]


def _topk(cx, experts: int, top_k: int) -> Op:
    hits = []
    for op in cx.ops:
        if op.target != "topk":
            continue
        args = op.attrs.get("args", ())
        k = args[1] if len(args) > 1 else op.attrs.get("kwargs", {}).get("k")
        width = cx.spec(op.inputs[0]).shape[-1]
        if k == top_k and same(width, experts):
            hits.append(op)
    if len(hits) != 1:
        raise LoweringError(
            f"block {cx.block.name!r}: expected one top-{top_k} over the {experts} router scores, "
            f"found {len(hits)}"
        )
    return hits[0]


def _downstream(cx, roots: set[str]) -> list[Op]:
    reached = set(roots)
    out = []
    for op in cx.ops:
        if any(v in reached for v in op.inputs):
            reached.update(op.outputs)
            out.append(op)
    return out


def match_moe(cx) -> MoePattern:
    d = cx.block.dims
    experts, top_k = d.get("experts"), d.get("top_k")
    if not experts or not top_k:
        raise LoweringError(f"block {cx.block.name!r} has no experts/top_k dims; is it a MoE block?")
    gate_up, down = _param_named(cx, "gate_up_proj"), _param_named(cx, "down_proj")
    if len(cx.graph.params[down].shape) != 3:
        raise LoweringError(f"block {cx.block.name!r}: down_proj {cx.graph.params[down].shape} is not [E, H, F]")
    topk = _topk(cx, experts, top_k)
    expert_ids = topk.outputs[1]
    rows = cx.spec(topk.inputs[0]).shape[0]
    tokens = _tokens(cx, gate_up, rows, d.get("hidden"))
    token_shape = cx.spec(tokens).shape
    routed = next(
        (
            op
            for op in _downstream(cx, {gate_up, down})
            if len(cx.spec(op.outputs[0]).shape) == 2
            and all(same(a, b) for a, b in zip(cx.spec(op.outputs[0]).shape, token_shape, strict=True))
        ),
        None,
    )
    if routed is None:
        raise LoweringError(f"block {cx.block.name!r}: no [N, H] value is computed from the expert weights")
    weights = _routing_weights(cx, expert_ids, down, (rows, top_k))
    absorbed = _dead_after(cx, routed, {tokens, expert_ids, weights})
    return MoePattern(tokens, expert_ids, weights, gate_up, down, routed, frozenset(absorbed))


def _producer_chain(cx, value: str):
    """`value`, then the first input of its producer, and so on within the block (through
    reshapes, unsqueezes and the row gathers of a grouped-mm MoE)."""
    producers = {o: op for op in cx.ops for o in op.outputs}
    seen = set()
    while value not in seen:
        seen.add(value)
        yield value
        op = producers.get(value)
        if op is None or not op.inputs or op.target not in _ROW_PERMUTING:
            return
        value = op.inputs[0]


# ops that reshape or reorder rows without mixing values: walking back through them from the
# grouped-mm experts' operands reaches the tokens and the routing weights they were taken from
_ROW_PERMUTING = frozenset({"index.Tensor", "view", "reshape", "unsqueeze", "_unsafe_view", "contiguous", "clone"})


def _tokens(cx, gate_up: str, rows, hidden) -> str:
    """The [N, H] tokens the expert weights are applied to: the other operand of the first
    op that reads gate_up_proj (dense einsum form), or, where that op only transposes the
    weight (transformers' grouped mm), the [N, H] value its row-gathered operand came from."""
    readers = [gate_up]
    for op in cx.ops:
        if not any(v in readers for v in op.inputs):
            continue
        data = [v for v in op.inputs if v not in readers and not cx.is_param(v)]
        if not data:
            readers.extend(op.outputs)
            continue
        for value in _producer_chain(cx, data[0]):
            shape = cx.spec(value).shape
            if len(shape) == 2 and same(shape[0], rows) and (hidden is None or same(shape[1], hidden)):
                return value
        break
    raise LoweringError(
        f"block {cx.block.name!r}: gate_up_proj is applied to no [N, H] tokens "
        f"(N = {rows} router rows) that the expert-parallel kernel could take"
    )


def _routing_weights(cx, expert_ids: str, down: str, shape: tuple) -> str:
    """The [N, k] weights paired with the expert indices: the src of the scatter that writes
    them into dense [N, E] routing weights (dense einsum form), or the [N, k] value whose
    flattened, sorted rows scale the down projection's output (transformers' grouped mm)."""
    for op in cx.ops:
        if op.target == "scatter.src" and len(op.inputs) == 3 and op.inputs[1] == expert_ids:
            return op.inputs[2]
    from_experts = {o for op in _downstream(cx, {down}) for o in op.outputs} | {down}
    for op in _downstream(cx, {down}):
        if op.target != "mul.Tensor" or len(op.inputs) != 2:
            continue
        scale = [v for v in op.inputs if v not in from_experts]
        if len(scale) != 1:
            continue
        for value in _producer_chain(cx, scale[0]):
            spec = cx.spec(value)
            if (value != expert_ids and "float" in spec.dtype and len(spec.shape) == 2
                    and all(same(a, b) for a, b in zip(spec.shape, shape, strict=True))):
                return value
    raise LoweringError(
        f"block {cx.block.name!r}: found no [N, k] routing weights for the top-k indices "
        f"{expert_ids!r} (neither scattered into dense [N, E] weights nor scaling the expert "
        "outputs); this MoE form is not lowered yet"
    )


def _dead_after(cx, routed: Op, kernel_inputs: set[str]) -> set[str]:
    """Ops the kernel makes unnecessary: the routed op and every op whose results are then
    used by no remaining op, not by the kernel, no later block and no graph output."""
    absorbed = {routed.name}
    needed = set(kernel_inputs) | {
        v
        for op in cx.ops
        for v in op.outputs
        if (cx.b.consumer_blocks.get(v, set()) - {cx.block.name}) or v in cx.graph.outputs
    }
    changed = True
    while changed:
        changed = False
        live_inputs = {v for op in cx.ops if op.name not in absorbed for v in op.inputs}
        for op in reversed(cx.ops):
            if op.name in absorbed:
                continue
            if any(o in live_inputs or o in needed for o in op.outputs):
                continue
            absorbed.add(op.name)
            changed = True
    return absorbed


def _expert_axes(cx) -> tuple[str, ...]:
    """The mesh axes the experts are split over: the model group for `ep` and `ep_dispatch`,
    kvp for `tp_ep`, none otherwise."""
    if cx.strategy.weights == "experts_tp":
        return tuple(a for a in cx.split_axes if a == "kvp")
    return cx.split_axes if cx.strategy.weights in ("experts", "experts_dispatch") else ()


def _ffn_axes(cx) -> tuple[str, ...]:
    """The mesh axes each expert's FFN columns are split over (`tp_ep`: tp)."""
    if cx.strategy.weights == "experts_tp":
        return tuple(a for a in cx.split_axes if a == "tp")
    return ()


def _model_group_index(cx):
    axes = _expert_axes(cx)
    if not axes:
        return 0
    if len(axes) == 2:
        return AxisRank(JOINED_MODEL_AXIS)
    return AxisRank(axes[0])


def lower_moe(cx) -> None:
    """Lower an `ep` MoE block: ordinary op rules for the router and shared experts, the
    expert computation replaced by `moe_experts` over this rank's experts."""
    from passes.lower.rules import rule_for

    try:
        pattern = match_moe(cx)
    except LoweringError:
        if cx.strategy.weights != "replicate":
            raise
        # a replicated MoE block of another form runs the model's own ops (exact as well)
        for op in cx.ops:
            rule_for(op)(cx, op)
        return
    group = 1
    for a in _expert_axes(cx):
        group *= cx.sizes[a]
    experts = cx.block.dims["experts"]
    ffn_split = 1
    for a in _ffn_axes(cx):
        ffn_split *= cx.sizes[a]
    if cx.block.dims.get("ffn", 0) % ffn_split:
        raise LoweringError(
            f"block {cx.block.name!r}: the experts' FFN width {cx.block.dims.get('ffn')} does not "
            f"split evenly over tp={ffn_split}"
        )
    if experts % group:
        raise LoweringError(
            f"block {cx.block.name!r}: {experts} experts do not split evenly over the model "
            f"group of {group} ranks; use a group size dividing {experts}"
        )
    cx.lower_ops_replacing(pattern.routed, lambda: _emit_kernel(cx, pattern), pattern.absorbed)


def _model_replicated(cx, value: str) -> Layout:
    layout = cx.layout(value)
    for a in cx.split_axes:
        layout = layout.with_axis(a, REPLICATE)
    return layout


def _model_split_rows(cx, value: str) -> Layout:
    layout = cx.layout(value)
    for a in cx.split_axes:
        layout = layout.with_axis(a, shard(0))
    return layout


def _emit_dispatch(cx, pt: MoePattern) -> None:
    """`ep_dispatch`: tokens split by batch over the model group, sent by all-to-all to the ranks
    holding their experts and combined back by a second all-to-all (rows stay split)."""
    axes = _expert_axes(cx)
    tokens_layout = _model_split_rows(cx, pt.tokens)
    x = cx.require(pt.tokens, tokens_layout)
    ids = cx.require(pt.expert_ids, _model_split_rows(cx, pt.expert_ids))
    weights = cx.require(pt.routing_weights, _model_split_rows(cx, pt.routing_weights))
    expert_layout = Layout.replicated(cx.axes)
    for a in axes:
        expert_layout = expert_layout.with_axis(a, shard(0))
    gate_up = cx.param(pt.gate_up, expert_layout)
    down = cx.param(pt.down, expert_layout)
    out = cx.define(pt.routed.outputs[0], tokens_layout, "routed")
    group = JOINED_MODEL_AXIS if len(axes) == 2 else axes[0]
    cx.steps.append(
        Compute(
            target="moe_dispatch",
            args=(ValueRef(x), ValueRef(ids), ValueRef(weights), ValueRef(gate_up), ValueRef(down),
                  _model_group_index(cx)),
            kwargs={"group": group},
            outputs=(out,),
            source_op=pt.routed.name,
        )
    )


def _emit_kernel(cx, pt: MoePattern) -> None:
    if cx.strategy.weights == "experts_dispatch":
        if not _expert_axes(cx):
            raise LoweringError(f"block {cx.block.name!r}: ep_dispatch needs a model group of 2 or more ranks")
        _emit_dispatch(cx, pt)
        return
    tokens_layout = _model_replicated(cx, pt.tokens)
    x = cx.require(pt.tokens, tokens_layout)
    ids = cx.require(pt.expert_ids, _model_replicated(cx, pt.expert_ids))
    weights = cx.require(pt.routing_weights, _model_replicated(cx, pt.routing_weights))
    expert_layout = Layout.replicated(cx.axes)
    for a in _expert_axes(cx):
        expert_layout = expert_layout.with_axis(a, shard(0))
    if _ffn_axes(cx):
        # TP inside experts: gate_up [E, 2F, H] regrouped as [E, 2, F, H] so a rank's F slice
        # keeps its gate rows and the matching up rows; down [E, H, F] split on F
        gate_layout, down_layout = expert_layout, expert_layout
        for a in _ffn_axes(cx):
            gate_layout = gate_layout.with_axis(a, shard(2))
            down_layout = down_layout.with_axis(a, shard(2))
        e, two_f, h = cx.graph.params[pt.gate_up].shape
        gate_up = cx.param(pt.gate_up, gate_layout, view=(e, 2, two_f // 2, h))
        down = cx.param(pt.down, down_layout)
    else:
        gate_up = cx.param(pt.gate_up, expert_layout)
        down = cx.param(pt.down, expert_layout)
    out_layout = tokens_layout
    for a in _expert_axes(cx) + _ffn_axes(cx):
        out_layout = out_layout.with_axis(a, PARTIAL)
    out = cx.define(pt.routed.outputs[0], out_layout, "routed")
    cx.steps.append(
        Compute(
            target="moe_experts",
            args=(ValueRef(x), ValueRef(ids), ValueRef(weights), ValueRef(gate_up), ValueRef(down),
                  _model_group_index(cx)),
            kwargs={},
            outputs=(out,),
            source_op=pt.routed.name,
        )
    )
