"""Lower (Graph, Plan) to a per-rank program: layout propagation and collective insertion.

Pre: an analyzed graph (blocks recognized, every op in exactly one block) and a plan with a
strategy for every block on a mesh whose only axes of size > 1 are `dp`, `cp`, `kvp` and `tp`.
Post: a `RankProgram` in which every value has a layout and a local shape and every change of
layout is an explicit step (free slice or async collective + wait).

How layouts are decided:
* Graph inputs: split along their batch dim over `dp` (the dp axis always splits the
  batch) and along the new tokens over `cp` (a cached prefix along L; see
  passes/lower/cp.py); replicated over `tp`, except KV caches, which the consuming attention block's
  strategy splits (KV heads for tp, batch for dp).
* At a block's entry its residual-stream inputs ([B, T, hidden] activations and the token
  ids) are brought to the plan's `layout_in`; this edge conversion runs in the driver. At its
  exit, stream outputs are brought to `layout_out` and new KV to the cache's layout.
* Inside a block each op's rule (passes/lower/rules.py) reads its inputs' layouts and the
  strategy's weight rule, asks for the input layouts it needs (`require`, which inserts the
  conversion) and states its outputs' layouts. An op without a rule is accepted only on
  fully replicated inputs; anything else is a `LoweringError` naming the op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar

from ir.graph import Block, Graph, Op
from ir.layout import (
    REPLICATE,
    Layout,
    LoweringError,
    Placement,
    local_shape,
    shard,
)
from ir.plan import BlockPlan, Plan
from ir.polynomial import Polynomial, as_polynomial, constant
from ir.rank_program import (
    BlockProgram,
    CacheSpec,
    Compute,
    EdgeProgram,
    LocalValue,
    ParamUse,
    ProgramInput,
    ProgramOutput,
    RankProgram,
    Step,
)
from ir.tensor import WORKLOAD_SYMBOLS, TensorSpec
from passes.lower.builder import (
    B_SYM,
    T_SYM,
    Builder,
    dim_of,
    identifier,
    op_hint,
    substitute,
)
from passes.lower.reuse import LayerReuse
from passes.lower.strategies import StrategyLowering, check_stream_layout, lowering_for
from passes.lower.symbols import symbol_sources


class BlockLowering:
    """Lowers one block: the context op rules work through."""

    def __init__(self, builder: Builder, block: Block, bp: BlockPlan, strategy: StrategyLowering):
        self.b = builder
        self.graph = builder.graph
        self.block = block
        self.plan = bp
        self.strategy = strategy
        # Helix nests head splits tp-major (see StrategyLowering); layouts built here follow.
        self.axes = strategy.split_axes(builder.axes) if strategy.weights == "helix" else builder.axes
        self.axes = tuple(a for a in builder.axes if a not in self.axes) + self.axes
        self.split_axes = strategy.split_axes(builder.axes)
        self.sizes = builder.sizes
        self.steps: list[Step] = []
        self.primary: dict[str, str] = {}
        self.versions: dict[tuple[str, Layout], str] = {}
        self.inputs: list[str] = []
        self.params: dict[str, ParamUse] = {}
        self.param_locals: dict[str, str] = {}
        self.extra_specs: dict[str, TensorSpec] = {}
        self.defined: set[str] = set()
        self.ops = [builder.op_by_name[name] for name in block.ops]

    @functools.cached_property
    def consumers(self) -> dict[str, list[Op]]:
        """Graph value -> the block's ops reading it (built when a rule first asks)."""
        out: dict[str, list[Op]] = {}
        for op in self.ops:
            for v in op.inputs:
                out.setdefault(v, []).append(op)
        return out

    # -- queries ----------------------------------------------------------------------------
    def spec(self, value: str) -> TensorSpec:
        return self.extra_specs.get(value) or self.graph.values[value]

    def rank(self, value: str) -> int:
        return len(self.spec(value).shape)

    def is_param(self, value: str) -> bool:
        return value in self.graph.params

    def local(self, value: str) -> str:
        """The local value this block uses for graph value `value` (its primary version)."""
        if value in self.primary:
            return self.primary[value]
        if self.is_param(value):
            return self.param(value, self.b.replicated())
        if value not in self.b.current:
            raise LoweringError(
                f"block {self.block.name!r} reads {value!r} before any block produced it"
            )
        local = self.b.current[value]
        self.primary[value] = local
        if local not in self.inputs:
            self.inputs.append(local)
        return local

    def layout(self, value: str) -> Layout:
        return self.b.layout(self.local(value))

    def on(self, value: str, axis: str) -> Placement:
        return self.layout(value).on(axis)

    # -- changes ------------------------------------------------------------------------------
    def param(self, value: str, layout: Layout, view: tuple[int, ...] = ()) -> str:
        """The local weight shard of parameter `value` in `layout` (over `view`, a reshape of
        the stored weight, when given; the first layout asked for becomes the block's
        primary version)."""
        ws = self.b.weight(value, layout, view)
        local = self.param_locals.get(ws.key)
        if local is None:
            local = f"w__{identifier(ws.key)}"
            if local not in self.b.values:
                self.b.values[local] = LocalValue(
                    local,
                    value,
                    self.graph.values.get(value) or TensorSpec(tuple(constant(d) for d in ws.shape), ws.dtype),
                    layout,
                    tuple(constant(d) for d in ws.local_shape),
                    identifier(ws.fqn),
                )
            self.param_locals[ws.key] = local
            self.params[ws.key] = ParamUse(
                key=ws.key, local_name=self._relative_fqn(ws.fqn), local=local
            )
        self.primary.setdefault(value, local)
        self.versions[(value, layout)] = local
        return local

    def _relative_fqn(self, fqn: str) -> str:
        prefix = self.param_prefix
        return fqn[len(prefix) + 1 :] if prefix and fqn.startswith(prefix + ".") else fqn

    @property
    def param_prefix(self) -> str:
        """The module path all of this block's weights live under (`model.layers.3.mlp`)."""
        paths = [
            self.graph.params[v].name.split(".")[:-1]
            for op in self.ops
            for v in op.inputs
            if v in self.graph.params
        ]
        if not paths:
            return ""
        common = paths[0]
        for p in paths[1:]:
            n = 0
            while n < min(len(common), len(p)) and common[n] == p[n]:
                n += 1
            common = common[:n]
        return ".".join(common)

    def require(self, value: str, layout: Layout) -> str:
        src = self.local(value)
        if self.b.layout(src) == layout:
            return src
        if (value, layout) in self.versions:
            return self.versions[(value, layout)]
        if self.is_param(value) and not any(p.is_partial for _, p in layout.placements):
            out = self.param(value, layout)
            self.primary[value] = src
            return out
        out = self.b.convert(src, layout, self.steps)
        self.versions[(value, layout)] = out
        return out

    def define(self, value: str, layout: Layout, hint: str) -> str:
        local = self.b.new_value(value, self.spec(value), layout, hint)
        self.primary[value] = local
        self.versions[(value, layout)] = local
        self.defined.add(value)
        return local

    def emit_compute(
        self,
        op: Op,
        inputs: dict[str, Layout],
        outputs: list[tuple[str, Layout]],
        *,
        target: str | None = None,
        args: Any = None,
        kwargs: Any = None,
        hint: str | None = None,
    ) -> list[str]:
        """Bring each input to its layout, define the outputs, append the Compute step.
        `args`/`kwargs` default to the op's own, with graph values renamed to locals."""
        mapping = {v: self.require(v, lay) for v, lay in inputs.items()}
        args = op.attrs.get("args", ()) if args is None else args
        kwargs = op.attrs.get("kwargs", {}) if kwargs is None else kwargs
        hint = hint or op_hint(op)
        outs = [self.define(v, lay, hint) for v, lay in outputs]
        self.steps.append(
            Compute(
                target=target or op.target,
                args=tuple(substitute(list(args), mapping)),
                kwargs=substitute(dict(kwargs), mapping),
                outputs=tuple(outs),
                source_op=op.name,
            )
        )
        return outs

    def local_shape_of(self, value: str, layout: Layout) -> tuple[Polynomial, ...]:
        return local_shape(self.spec(value).shape, layout, self.sizes, what=f"value {value!r}")

    def lower_ops_replacing(
        self, anchor: Op, emit: Callable[[], None], absorbed: Collection[str]
    ) -> None:
        """Lower the block's ops by their rules, except that `emit` (a distributed kernel)
        runs in place of `anchor` and the ops in `absorbed` (folded into it) are skipped."""
        from passes.lower.rules import rule_for

        for op in self.ops:
            if op is anchor:
                emit()
            elif op.name not in absorbed:
                rule_for(op)(self, op)

    def fail(self, op: Op, why: str) -> LoweringError:
        layouts = ", ".join(
            f"{v}: {self.layout(v).describe()}" for v in op.inputs if v in self.primary or v in self.b.current
        )
        return LoweringError(
            f"block {self.block.name!r} (strategy {self.plan.strategy!r}): op {op.name} "
            f"({op.target}) {why} [inputs {layouts}]. The planner should not offer this "
            "strategy for this block, or codegen needs a rule for the op"
        )


def _stream_target(builder: Builder, value: str, current: Layout, layout_name: str) -> Layout:
    """The residual stream's layout over the model axes (kvp×tp, nested kvp-major); over cp
    it is always split along the new tokens (load-balanced order, see passes/lower/cp.py)."""
    for axis in builder.model_axes:
        current = current.with_axis(axis, builder.stream_placement(value, layout_name))
    if "cp" in builder.axes:
        current = current.with_axis("cp", builder.stream_placement(value, "shard_seq"))
    return current


def _input_layout(builder: Builder, name: str) -> Layout:
    spec = builder.graph.values[name]
    layout = builder.replicated()
    if "dp" in builder.axes:
        d = dim_of(spec.shape, B_SYM)
        if d is not None:
            layout = layout.with_axis("dp", shard(d))
    if "cp" in builder.axes:
        # new tokens split over cp (balanced by the driver); a cached prefix along L
        d = dim_of(spec.shape, WORKLOAD_SYMBOLS["L"] if name.startswith("past_kv") else T_SYM)
        if d is not None:
            layout = layout.with_axis("cp", shard(d))
    model = builder.model_axes
    if model and name.startswith("past_kv"):
        consumer = sorted(builder.consumer_blocks.get(name, ()))
        if consumer:
            bp = _block_plan(builder, consumer[0])
            strat = lowering_for(bp.strategy, bp.name)
            latent = "kv_lora_rank" in _block_dims(builder, bp.name) and _single_kv_head(spec.shape)
            if latent and strat.cache == "heads":
                pass  # a latent cache: one KV "head" shared by all query heads, replicated
            elif latent and strat.cache == "helix":
                from passes.lower.helix import helix_cache_layout

                layout = helix_cache_layout(builder, name, layout)
            elif strat.cache in ("heads", "helix", "cp"):
                # helix splits KV heads over tp only; tp-style strategies over kvp×tp
                head_axes = ("tp",) if strat.cache == "helix" else model
                head_axes = tuple(a for a in head_axes if a in model)
                if len(spec.shape) != 4:
                    raise LoweringError(
                        f"cache {name!r} {spec} has no KV-head dim; strategy {bp.strategy!r} "
                        f"of block {bp.name!r} splits KV heads (latent caches are not split by heads)"
                    )
                heads = as_polynomial(spec.shape[1])
                n = 1
                for a in head_axes:
                    n *= builder.sizes[a]
                if heads.as_int() is not None and heads.as_int() % n:
                    group = "×".join(f"{a}={builder.sizes[a]}" for a in head_axes)
                    raise LoweringError(
                        f"block {bp.name!r} uses {bp.strategy!r}, which splits KV heads over "
                        f"{group}, but its cache {name!r} has {heads} KV heads; tp must divide "
                        "the KV heads (duplicating KV heads is not lowered). Use tp <= "
                        f"{heads} dividing it, or another strategy for this block"
                    )
                for a in head_axes:
                    layout = layout.with_axis(a, shard(1))
                if strat.cache == "helix":
                    from passes.lower.helix import helix_cache_layout

                    layout = helix_cache_layout(builder, name, layout)
            elif strat.cache == "batch":
                for a in model:
                    layout = layout.with_axis(a, shard(0))
    return layout


def _single_kv_head(shape: tuple) -> bool:
    """A latent attention's cache: `[B, L, r]` (the model file's absorbed form), or
    transformers' `[B, 1, L, r]` (latent and roped key viewed as one KV head)."""
    return len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)


def _block_dims(builder: Builder, name: str) -> dict:
    return next((b.dims for b in builder.graph.blocks if b.name == name), {})


def _block_plan(builder: Builder, name: str) -> BlockPlan:
    try:
        return builder.block_plans[name]
    except KeyError:
        raise LoweringError(
            f"the plan has no entry for block {name!r}; plan and graph come from different "
            "models or versions. Re-run `helixplan plan`"
        ) from None


def _lower_block(builder: Builder, block: Block, reuse: LayerReuse | None = None) -> None:
    bp = _block_plan(builder, block.name)
    strategy = lowering_for(bp.strategy, block.name)
    layout_in = check_stream_layout(bp.layout_in, block.name)
    layout_out = check_stream_layout(bp.layout_out, block.name)
    cx = BlockLowering(builder, block, bp, strategy)
    _enter_block(builder, cx, layout_in)
    outputs = reuse.replay(cx) if reuse is not None else None
    if outputs is None:
        recording = reuse.start(cx) if reuse is not None else None
        _lower_body(cx)
        outputs = _exit_block(builder, cx, layout_out)
        if recording is not None:
            reuse.finish(recording, cx, outputs)
    builder.items.append(
        BlockProgram(
            name=block.name,
            kind=block.kind,
            group=block.group,
            strategy=bp.strategy,
            layout_in=layout_in,
            layout_out=layout_out,
            inputs=tuple(cx.inputs),
            params=tuple(cx.params.values()),
            outputs=tuple(outputs),
            steps=tuple(cx.steps),
        )
    )


def _enter_block(builder: Builder, cx: BlockLowering, layout_in: str) -> None:
    """Entry: the driver converts residual-stream inputs to the plan's `layout_in`."""
    edge_steps: list[Step] = []
    seen: set[str] = set()
    produced_here = {o for p in cx.ops for o in p.outputs}
    for op in cx.ops:
        for v in op.inputs:
            if v in seen or v in builder.graph.params or v in produced_here:
                continue
            seen.add(v)
            if not builder.is_stream(v):
                continue
            src = builder.current[v]
            target = _stream_target(builder, v, builder.layout(src), layout_in)
            key = (v, target)
            if key not in builder.driver_versions:
                builder.driver_versions[(v, builder.layout(src))] = src
                builder.driver_versions[key] = builder.convert(src, target, edge_steps)
            local = builder.driver_versions[key]
            cx.primary[v] = local
            cx.inputs.append(local)
    if edge_steps:
        builder.items.append(EdgeProgram(before_block=cx.block.name, steps=tuple(edge_steps)))


def _lower_body(cx: BlockLowering) -> None:
    """The block's ops, by the strategy's kernel lowering or the generic op rules."""
    from passes.lower.rules import rule_for

    block, strategy = cx.block, cx.strategy
    if strategy.cache == "helix" and "kv_lora_rank" in block.dims:
        from passes.lower.mla import lower_latent_helix

        lower_latent_helix(cx)
    elif strategy.cache == "helix":
        from passes.lower.helix import lower_helix_attention

        lower_helix_attention(cx)
    elif strategy.cache == "cp":
        from passes.lower.cp import lower_cp_attention

        lower_cp_attention(cx)
    elif block.kind == "attention" and "kv_lora_rank" in block.dims:
        from passes.lower.mla import lower_latent_attention

        lower_latent_attention(cx)
    elif strategy.weights in ("experts", "experts_dispatch", "experts_tp") or (
        block.kind == "moe" and strategy.weights == "replicate"
    ):
        from passes.lower.moe import lower_moe

        lower_moe(cx)
    else:
        for op in cx.ops:
            rule_for(op)(cx, op)


def _exit_block(builder: Builder, cx: BlockLowering, layout_out: str) -> list[str]:
    """Exit: values used later leave in the layout the plan and the caches expect; returns
    the block's output locals (and points `builder.current` at them)."""
    block, strategy = cx.block, cx.strategy
    cache_of_output = {new: cache for cache, new in builder.cache_pairs}
    logits = builder.graph.outputs[0] if builder.graph.outputs else None
    outputs: list[str] = []
    for value in sorted(cx.defined, key=lambda v: _def_index(cx, v)):
        if value in cx.extra_specs:
            continue
        later = builder.consumer_blocks.get(value, set()) - {block.name}
        is_output = value in builder.graph.outputs
        if not later and not is_output:
            continue
        current = cx.layout(value)
        if value in cache_of_output:
            target = builder.layout(builder.current[cache_of_output[value]])
            if strategy.cache == "helix":
                # every kvp rank computes the new tokens' K/V; the owner rank stores them
                target = target.with_axis("kvp", REPLICATE)
        elif value == logits and (builder.plan.workload or {}).get("kind") == "train":
            # training completes the loss from vocabulary-split logits (run_train's
            # cross_entropy_sum): no rank gathers them
            target = current
        elif value == logits or builder.is_stream(value):
            target = _stream_target(builder, value, current, layout_out)
        else:
            target = current
        local = cx.require(value, target)
        builder.current[value] = local
        outputs.append(local)
    return outputs


def _def_index(cx: BlockLowering, value: str) -> int:
    for i, op in enumerate(cx.ops):
        if value in op.outputs:
            return i
    return len(cx.ops)


def lower_program(graph: Graph, plan: Plan, *, reuse: bool = True) -> RankProgram:
    """With `reuse`, a block that repeats an already lowered block of its layer group (same
    ops, plan entry and input layouts) is lowered as a renamed copy of it (passes/lower/reuse.py);
    the program is the same as lowering every block by its rules."""
    if not graph.blocks:
        raise LoweringError("the graph has no blocks; run the analysis passes before lowering")
    builder = Builder(graph, plan)
    layer_reuse = LayerReuse(builder) if reuse else None
    inputs: list[ProgramInput] = []
    for name in graph.inputs:
        layout = _input_layout(builder, name)
        local = builder.new_value(name, graph.values[name], layout, identifier(name))
        builder.current[name] = local
        role = "cache" if name.startswith("past_kv") else ("tokens" if builder.is_stream(name) else "other")
        inputs.append(ProgramInput(name=name, local=local, role=role))
    for block in graph.blocks:
        _lower_block(builder, block, layer_reuse)
    outputs = []
    cache_outputs = {new for _, new in builder.cache_pairs}
    for i, name in enumerate(graph.outputs):
        if name not in builder.current:
            raise LoweringError(f"graph output {name!r} is produced by no block")
        role = "logits" if i == 0 else ("cache" if name in cache_outputs else "other")
        outputs.append(ProgramOutput(name=name, local=builder.current[name], role=role))
    caches = []
    for cache, new in builder.cache_pairs:
        in_layout = builder.values[builder.current[cache]].layout
        out_layout = builder.values[builder.current[new]].layout
        from passes.lower.helix import helix_kvp_block

        kvp_block = helix_kvp_block(builder, cache)
        if kvp_block:
            in_layout = in_layout.with_axis("kvp", REPLICATE)
        if dict(in_layout.placements) != dict(out_layout.placements):
            raise LoweringError(
                f"new KV {new!r} ends as {out_layout.describe()} but cache {cache!r} is "
                f"{in_layout.describe()}; they must match to append locally"
            )
        length_dim = dim_of(graph.values[cache].shape, WORKLOAD_SYMBOLS["L"])
        if length_dim is None:
            raise LoweringError(f"cache input {cache!r} {graph.values[cache]} has no L dim")
        caches.append(CacheSpec(input=cache, output=new, length_dim=length_dim, kvp_block=kvp_block))
    renamed_from = dict(layer_reuse.renamed_from) if layer_reuse is not None else {}
    symbols = symbol_sources(builder, inputs, renamed_from)
    return RankProgram(
        mesh=dict(builder.mesh),
        axes=builder.axes,
        values=dict(builder.values),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        items=tuple(builder.items),
        weights=tuple(builder.weights.values()),
        caches=tuple(caches),
        symbols=symbols,
        meta={
            "source": dict(graph.meta.get("source") or {}),
            "op_namespaces": dict(graph.meta.get("op_namespaces") or {}),
        },
        renamed_from=renamed_from,
    )


@dataclass(frozen=True)
class LowerToRanks:
    """Pass: (Graph, Plan) -> RankProgram (layouts propagated, collectives explicit, not yet
    scheduled). Pre: blocks recognized; every block named in `plan`. Post: every value has a
    layout and local shape; every layout change is a step."""

    name: ClassVar[str] = "lower-to-ranks"
    plan: Plan
    reuse: bool = True  # lower repeated layers once and copy them renamed (passes/lower/reuse.py)

    def run(self, graph: Graph) -> RankProgram:
        return lower_program(graph, self.plan, reuse=self.reuse)


