"""Program-wide lowering state: local values, layout conversions, weight shards.

`Builder` holds what outlives one block: every local value, the version of each graph
value the driver holds, the weight shards and the ordered blocks and edges. `convert`
turns a local value into another layout as explicit steps (free slices, async collectives
with their waits) — the one place collectives are created.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ir.graph import Graph, Op, ValueRef
from ir.layout import (
    REPLICATE,
    Layout,
    LoweringError,
    Placement,
    local_shape,
    shard,
)
from ir.mesh import MODEL_AXES
from ir.plan import Plan
from ir.polynomial import Polynomial, as_polynomial, constant
from ir.rank_program import (
    BlockProgram,
    Collective,
    EdgeProgram,
    LocalShard,
    LocalValue,
    Step,
    Wait,
    WeightShard,
)
from ir.tensor import WORKLOAD_SYMBOLS, TensorSpec

SUPPORTED_AXES = ("dp", "cp", "kvp", "tp")
# A collective that changes kvp and tp (ir.mesh.MODEL_AXES) alike runs once over the joined
# group `kvp_tp` (ranks ordered kvp-major, as the nested kvp/tp shards are).
JOINED_MODEL_AXIS = "kvp_tp"
B_SYM, T_SYM = WORKLOAD_SYMBOLS["B"], WORKLOAD_SYMBOLS["T"]


def same(a: Any, b: Any) -> bool:
    """Whether two sizes (ints or polynomials) are the same formula: polynomials are kept
    in one canonical form, so this is equality."""
    return as_polynomial(a) == as_polynomial(b)


def dim_of(shape: tuple[Polynomial, ...], symbol: Polynomial) -> int | None:
    for i, d in enumerate(shape):
        if same(d, symbol):
            return i
    return None


@functools.lru_cache(maxsize=1 << 16)
def identifier(text: str) -> str:
    text = re.sub(r"[^0-9A-Za-z_]", "_", text).strip("_") or "v"
    return f"v_{text}" if text[0].isdigit() else text


def op_hint(op: Op) -> str:
    """A readable name for an op's result: the module's attribute for projections and norms
    (`q_proj`, `input_layernorm`), else the op's name (`view`, `attn`)."""
    leaf = op.module_path.rsplit(".", 1)[-1] if op.module_path else ""
    base = op.target.split(".")[0].strip("_")
    if op.target in ("linear", "embedding", "rms_norm", "layer_norm") and leaf and not leaf.isdigit():
        return identifier(leaf)
    return {"scaled_dot_product_attention": "attn", "slice": "sliced"}.get(base, base)


def tensor_refs(x: Any) -> list[str]:
    if isinstance(x, ValueRef):
        return [x.name]
    if isinstance(x, (list, tuple)):
        return [n for v in x for n in tensor_refs(v)]
    if isinstance(x, dict):
        return [n for v in x.values() for n in tensor_refs(v)]
    return []


def substitute(x: Any, mapping: dict[str, str]) -> Any:
    if isinstance(x, ValueRef):
        return ValueRef(mapping.get(x.name, x.name))
    if isinstance(x, list):
        return [substitute(v, mapping) for v in x]
    if isinstance(x, tuple):
        return tuple(substitute(v, mapping) for v in x)
    if isinstance(x, dict):
        return {k: substitute(v, mapping) for k, v in x.items()}
    return x


class Builder:
    """Program-wide state: local values, the version of each graph value the driver holds,
    weight shards, and the list of blocks and edges."""

    def __init__(self, graph: Graph, plan: Plan):
        self.graph = graph
        self.plan = plan
        mesh = {k: int(v) for k, v in plan.mesh.items()}
        extra = sorted(a for a, n in mesh.items() if n > 1 and a not in SUPPORTED_AXES)
        if extra:
            raise LoweringError(
                f"the plan's mesh {mesh} uses axes {extra}; codegen lowers only dp, cp, kvp "
                "and tp so far. Re-plan on a mesh without them"
            )
        self.mesh = mesh
        self.block_plans = {b.name: b for b in reversed(plan.blocks)}  # first entry wins, as Plan.block
        self.axes = tuple(a for a in SUPPORTED_AXES if mesh.get(a, 1) > 1)
        self.sizes = {a: mesh[a] for a in self.axes}
        self.model_axes = tuple(a for a in MODEL_AXES if a in self.axes)
        self.values: dict[str, LocalValue] = {}
        self.current: dict[str, str] = {}
        self.driver_versions: dict[tuple[str, Layout], str] = {}
        self.weights: dict[str, WeightShard] = {}
        self.items: list[BlockProgram | EdgeProgram] = []
        self._counter = 0
        self.block_of_op = {o: b.name for b in graph.blocks for o in b.ops}
        self.op_by_name = {o.name: o for o in graph.ops}
        self.consumer_blocks: dict[str, set[str]] = {}
        for op in graph.ops:
            for v in op.inputs:
                self.consumer_blocks.setdefault(v, set()).add(self.block_of_op[op.name])
        self.hidden = _hidden_size(graph)
        self.cache_pairs = _cache_pairs(graph)

    # -- values ---------------------------------------------------------------------------
    def new_value(self, source: str, spec: TensorSpec, layout: Layout, hint: str) -> str:
        self._counter += 1
        name = f"{identifier(source)}__{self._counter}"
        shape = local_shape(spec.shape, layout, self.sizes, what=f"value {source!r}")
        self.values[name] = LocalValue(name, source, spec, layout, shape, hint or identifier(source))
        return name

    def layout(self, local: str) -> Layout:
        return self.values[local].layout

    def replicated(self) -> Layout:
        return Layout.replicated(self.axes)

    def convert(self, local: str, target: Layout, steps: list[Step], hint: str = "") -> str:
        """Steps that turn `local` into `target`: gathers and reductions innermost axis
        first, then free slices outermost axis first (the order DTensor nests shards in)."""
        src = self.values[local]
        cur = src.layout
        if cur == target:
            return local
        name = local
        hint = hint or src.hint
        pending_slices: list[tuple[str, int]] = []
        joined_done = False
        for axis in reversed(self.axes):
            p, q = cur.on(axis), target.on(axis)
            if p == q or (joined_done and axis in MODEL_AXES):
                continue
            if p.sections or q.sections:
                raise LoweringError(
                    f"value {src.source!r} would change from {p} to {q} on {axis}; a fused "
                    "projection is split by sections only when the model cuts its output into "
                    "them (passes/lower/fused.py), so nothing converts a sectioned shard"
                )
            if self._joins_model_axes(cur, target, axis):
                # kvp and tp change alike: one collective over the whole model group.
                joined_done = True
                kind = _collective_kind(p, q)
                new_layout = cur.with_axis("kvp", q).with_axis("tp", q)
                out = self.new_value(src.source, src.spec, new_layout, _conv_hint(hint, kind))
                steps.append(
                    Collective(
                        kind=kind, axis=JOINED_MODEL_AXIS, input=name, output=out,
                        handle=f"work_{out}", src_dim=p.dim if p.is_shard else -1,
                        dst_dim=q.dim if q.is_shard else -1,
                    )
                )
                steps.append(Wait(handle=f"work_{out}", output=out))
                name, cur = out, new_layout
                continue
            if q.is_partial:
                raise LoweringError(
                    f"value {src.source!r} would need {p} -> Partial on {axis}; no rule asks for it"
                )
            if p.is_replicate:
                pending_slices.append((axis, q.dim))
                continue
            inner = self.axes[self.axes.index(axis) + 1 :]
            dims = {d for d in (p.dim, q.dim) if d >= 0}
            if any(cur.on(a).is_shard and cur.on(a).dim in dims for a in inner):
                raise LoweringError(
                    f"value {src.source!r}: cannot change {axis} from {p} to {q} while an inner "
                    f"axis splits the same dim ({cur.describe()})"
                )
            kind = _collective_kind(p, q)
            new_layout = cur.with_axis(axis, q)
            out = self.new_value(src.source, src.spec, new_layout, _conv_hint(hint, kind))
            handle = f"work_{out}"
            steps.append(
                Collective(
                    kind=kind,
                    axis=axis,
                    input=name,
                    output=out,
                    handle=handle,
                    src_dim=p.dim if p.is_shard else -1,
                    dst_dim=q.dim if q.is_shard else -1,
                )
            )
            steps.append(Wait(handle=handle, output=out))
            name, cur = out, new_layout
        for axis, dim in reversed(pending_slices):
            inner = self.axes[self.axes.index(axis) + 1 :]
            if any(cur.on(a).is_shard and cur.on(a).dim == dim for a in inner):
                raise LoweringError(
                    f"value {src.source!r}: cannot split dim {dim} over {axis} after an inner "
                    f"axis already split it ({cur.describe()})"
                )
            new_layout = cur.with_axis(axis, shard(dim))
            out = self.new_value(src.source, src.spec, new_layout, _conv_hint(hint, "slice"))
            steps.append(LocalShard(axis=axis, dim=dim, input=name, output=out))
            name, cur = out, new_layout
        return name

    def _joins_model_axes(self, cur: Layout, target: Layout, axis: str) -> bool:
        """`axis` is tp, kvp is active, and both axes go from the same placement to the same
        placement that needs communication, nested kvp-major on both sides."""
        if axis != "tp" or "kvp" not in self.axes:
            return False
        p, q = cur.on("tp"), target.on("tp")
        if cur.on("kvp") != p or target.on("kvp") != q or p.is_replicate or q.is_partial:
            return False
        return all(
            lay.axes.index("kvp") < lay.axes.index("tp")
            for lay, pl in ((cur, p), (target, q))
            if pl.is_shard
        )

    # -- weights ----------------------------------------------------------------------------
    def weight(self, param: str, layout: Layout, view: tuple[int, ...] = ()) -> WeightShard:
        spec = self.graph.params[param]
        key = f"{spec.name}@{layout.tag()}" if layout.axes else spec.name
        if view:
            key += "@view" + "x".join(str(d) for d in view)
        ws = self.weights.get(key)
        if ws is None:
            shape = tuple(constant(d) for d in (view or spec.shape))
            local = local_shape(shape, layout, self.sizes, what=f"weight {spec.name!r}")
            if view:
                local = _merge_view(tuple(spec.shape), view, tuple(int(d) for d in local))
            ws = WeightShard(
                key=key,
                param=param,
                fqn=spec.name,
                aliases=spec.aliases,
                shape=spec.shape,
                dtype=spec.dtype,
                layout=layout,
                local_shape=tuple(int(d) for d in local),
                view=tuple(view),
                persistent=spec.persistent,
                buffer=spec.is_buffer,
            )
            self.weights[key] = ws
        return ws

    # -- stream classification ------------------------------------------------------------
    def is_stream(self, value: str) -> bool:
        """The residual stream: token ids [B, T] and [B, T, ..., hidden] activations."""
        spec = self.graph.values.get(value)
        if spec is None or len(spec.shape) < 2:
            return False
        if not (same(spec.shape[0], B_SYM) and same(spec.shape[1], T_SYM)):
            return False
        if spec.dtype.startswith(("int", "uint")):
            return len(spec.shape) == 2
        return self.hidden is not None and same(spec.shape[-1], self.hidden)

    def stream_placement(self, value: str, layout_name: str) -> Placement:
        spec = self.graph.values[value]
        if layout_name == "replicate":
            return REPLICATE
        symbol = B_SYM if layout_name == "shard_batch" else T_SYM
        d = dim_of(spec.shape, symbol)
        if d is None:
            raise LoweringError(f"value {value!r} {spec} has no {symbol} dim for {layout_name}")
        return shard(d)


def _merge_view(shape: tuple[int, ...], view: tuple[int, ...], local_view: tuple[int, ...]) -> tuple[int, ...]:
    """The local shape in the stored rank: consecutive view dims whose sizes multiply to a
    stored dim merge back into it."""
    out, i = [], 0
    for size in shape:
        prod, local = 1, 1
        while prod < size and i < len(view):
            prod, local, i = prod * view[i], local * local_view[i], i + 1
        if prod != size:
            raise LoweringError(f"view {view} does not regroup weight shape {shape}")
        out.append(local)
    if i != len(view):
        raise LoweringError(f"view {view} does not regroup weight shape {shape}")
    return tuple(out)


def _collective_kind(p: Placement, q: Placement) -> str:
    if p.is_partial:
        return "all_reduce" if q.is_replicate else "reduce_scatter"
    return "all_gather" if q.is_replicate else "all_to_all"


def _conv_hint(hint: str, kind: str) -> str:
    suffix = {
        "all_reduce": "sum",
        "all_gather": "full",
        "reduce_scatter": "rs",
        "all_to_all": "a2a",
        "slice": "local",
    }[kind]
    return f"{hint}_{suffix}"


def _hidden_size(graph: Graph) -> int | None:
    for b in graph.blocks:
        if b.kind in ("embedding", "attention", "mlp", "norm") and b.dims.get("hidden"):
            return b.dims["hidden"]
    return None


def _cache_pairs(graph: Graph) -> list[tuple[str, str]]:
    """(cache input, new-KV output) pairs: by convention outputs are logits then one new KV
    tensor per `past_kv*` input, in the same order."""
    caches = [n for n in graph.inputs if n.startswith("past_kv")]
    if not caches:
        return []
    news = graph.outputs[1:]
    if len(news) != len(caches):
        raise LoweringError(
            f"the graph has {len(caches)} past_kv inputs but {len(news)} outputs after the "
            "logits; forward must return (logits, new_kv) with one new tensor per cache input"
        )
    return list(zip(caches, news, strict=True))


