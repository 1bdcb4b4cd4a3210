"""Capture a PyTorch module into an `ir.Graph` with torch.export.

The only module of the project that touches torch.fx / torch.export. The model is traced
non-strictly on whatever device its parameters live on (the planner builds it under
`torch.device("meta")`, so a 400B model costs no memory) with batch, new tokens and cache
length as dynamic dims. Export gives sizes as sympy; every shape in the resulting IR is a
`Polynomial` (ir/polynomial.py) in the workload symbols B, T, L (`ir.tensor`), whatever
names torch gave its own symbols, so that nothing downstream imports sympy.

Inputs follow the forward convention of the README: `input_ids`/`position_ids` [B, T],
`cache_lens` [B], and `past_kv` with one cache per layer, `(k, v)` each [B, K, L, d] or one
latent tensor [B, L, D]. `dim_roles_for` says which dim of each input is B, T or L.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import sympy
import torch
import torch.fx
import torch.utils._pytree as pytree
from torch.export import Dim

from ir.errors import CaptureError
from ir.graph import Graph, Op, ParamSpec, ValueRef
from ir.polynomial import Polynomial, constant, from_sympy
from ir.tensor import WORKLOAD_SYMBOLS, TensorSpec

# Ops that carry no computation the planner prices or the program needs.
NOISE_TARGETS = frozenset(
    {
        "_assert_tensor_metadata",
        "_assert_scalar",
        "sym_constrain_range_for_size",
        "sym_constrain_range",
        "_assert_async",
        "sym_size",
        "sym_numel",
        "sym_stride",
        "sym_storage_offset",
    }
)

Role = str  # "B", "T" or "L"


def dim_roles_for(name: str, tensor: torch.Tensor) -> dict[int, Role]:
    """Which dims of a forward-convention input are batch (B), new tokens (T), cache (L)."""
    if name in ("input_ids", "position_ids", "labels", "attention_mask", "inputs_embeds"):
        return {0: "B", 1: "T"}
    if name == "cache_lens":
        return {0: "B"}
    if name.startswith("past_kv"):
        if tensor.dim() == 4:
            return {0: "B", 2: "L"}
        if tensor.dim() == 3:
            return {0: "B", 1: "L"}
    return {}


def _ordered_kwargs(module: torch.nn.Module, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Order kwargs as forward's signature does, so the flattened order is predictable."""
    params = list(inspect.signature(module.forward).parameters)
    ordered = {k: kwargs[k] for k in params if k in kwargs}
    ordered.update({k: v for k, v in kwargs.items() if k not in ordered})
    return ordered


def _leaf_names(kwargs: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, leaf) pairs for each tensor leaf; nested names join with `_` (past_kv_3_0)."""
    leaves_with_path, _ = pytree.tree_flatten_with_path(dict(kwargs))
    out = []
    for path, leaf in leaves_with_path:
        parts = []
        for p in path:
            key = getattr(p, "key", getattr(p, "idx", None))
            parts.append(str(key))
        out.append(("_".join(parts), leaf))
    return out


def _dynamic_shapes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    def spec_for(path_prefix: str, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            roles = dim_roles_for(path_prefix, value)
            return {d: Dim.AUTO for d in roles} or None
        if isinstance(value, (tuple, list)):
            return type(value)(spec_for(f"{path_prefix}_{i}", v) for i, v in enumerate(value))
        return None

    return {k: spec_for(k, v) for k, v in kwargs.items()}


def _target_namespace(target: Any) -> str:
    """The operator namespace (`aten`, `prims`, a custom library) of an op overload; "" for a
    plain Python callable. Stored per target so that codegen spells `torch.ops.NS.OP.OVERLOAD`
    without importing torch to ask which namespace a name like `sum.dim_IntList` is in."""
    return target.namespace if isinstance(target, torch._ops.OpOverload) else ""


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        ns = target.namespace
        name = target._opname
        overload = target._overloadname
        base = name if overload == "default" else f"{name}.{overload}"
        return base if ns == "aten" else f"{ns}.{base}"
    return getattr(target, "__name__", str(target))


def _module_info(node: torch.fx.Node, strip_prefix: str) -> tuple[str, tuple[str, ...]]:
    stack = node.meta.get("nn_module_stack") or {}
    entries = [v for v in stack.values() if isinstance(v, tuple) and len(v) == 2]
    entries = [(p, t) for p, t in entries if not p.startswith("_empty_nn_module_stack")]
    if not entries:
        return "", ()
    path, _ = entries[-1]
    path = re.sub(r"^L\['self'\]\.?", "", path)
    if strip_prefix and (path == strip_prefix or path.startswith(strip_prefix + ".")):
        path = path[len(strip_prefix) + 1 :]
    types = tuple(t.rsplit(".", 1)[-1] if isinstance(t, str) else t.__name__ for _, t in entries)
    return path, types


class _Converter:
    """Turns an ExportedProgram's graph into IR records."""

    def __init__(self, symbol_map: dict[sympy.Symbol, sympy.Symbol]):
        self.symbol_map = symbol_map

    def expr(self, value: Any) -> Polynomial:
        """A size as a Polynomial in B, T, L: export's sympy is converted here, once, so
        nothing after capture needs sympy."""
        if isinstance(value, torch.SymInt):
            expr = sympy.sympify(value.node.expr).xreplace(self.symbol_map)
            try:
                return from_sympy(expr)
            except ValueError as err:
                raise CaptureError(
                    f"{err}. torch.export gave this size; report the model to the developers"
                ) from None
        return constant(int(value))

    def spec(self, val: Any) -> TensorSpec:
        shape = tuple(self.expr(d) for d in val.shape)
        return TensorSpec(shape=shape, dtype=str(val.dtype).removeprefix("torch."))

    def arg(self, a: Any, names: dict[str, str], sym_nodes: dict[str, Polynomial]) -> Any:
        if isinstance(a, torch.fx.Node):
            if a.name in sym_nodes:
                return sym_nodes[a.name]
            return ValueRef(names.get(a.name, a.name))
        if isinstance(a, (list, tuple)):  # plain containers: the IR must load without torch
            items = [self.arg(x, names, sym_nodes) for x in a]
            return items if isinstance(a, list) else tuple(items)
        if isinstance(a, dict):
            return {k: self.arg(v, names, sym_nodes) for k, v in a.items()}
        if isinstance(a, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
            return str(a).removeprefix("torch.")
        if isinstance(a, torch.SymInt):
            return self.expr(a)
        return a


def export_module(
    module: torch.nn.Module, kwargs: Mapping[str, Any], *, what: str
) -> torch.export.ExportedProgram:
    """torch.export (non-strict, no_grad) with the convention's dims dynamic."""
    kwargs = _ordered_kwargs(module, kwargs)
    try:
        with torch.no_grad(), _quiet_torch_logs():
            return torch.export.export(
                module, (), dict(kwargs), strict=False, dynamic_shapes=_dynamic_shapes(kwargs)
            )
    except Exception as exc:  # torch raises many types; each becomes one diagnostic
        raise CaptureError(_explain_export_failure(exc, what, _failing_module(exc, module))) from exc


@contextlib.contextmanager
def _quiet_torch_logs():
    """On a failed trace torch logs warnings and graph dumps to stderr ahead of its exception;
    the CaptureError says what matters in one paragraph, so those logs are held back."""
    loggers = [logging.getLogger(n) for n in _NOISY_TORCH_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch prints a partial graph there
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


_NOISY_TORCH_LOGGERS = (
    "torch.fx.experimental.symbolic_shapes",
    "torch._export",
    "torch.export",
    "torch._dynamo",
    "torch._subclasses",
)


def _failing_module(exc: BaseException, root: torch.nn.Module) -> str:
    """Where the user's code stopped the trace: the innermost `forward` frame of a submodule
    of `root` (non-strict export runs the model's Python as is, so its frames are in the
    traceback), as `module path (Class) at file:line`; empty when none is found."""
    names = {id(m): name for name, m in root.named_modules()}
    found = ""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and id(owner) in names:
            name = repr(names[id(owner)]) if names[id(owner)] else "the top"
            found = (
                f"module {name} ({type(owner).__name__}.{frame.f_code.co_name} at "
                f"{frame.f_code.co_filename}:{tb.tb_lineno})"
            )
        tb = tb.tb_next
    return found


def _explain_export_failure(exc: Exception, what: str, where: str = "") -> str:
    text = " ".join(str(exc).split())
    module_hint = f" in {where}" if where else ""
    if not where:
        m = re.search(r"File \"([^\"]+)\", line (\d+)", str(exc))
        if m:
            module_hint = f" (at {m.group(1)}:{m.group(2)})"
    kind = type(exc).__name__
    if "data-dependent" in text or "GuardOnDataDependentSymNode" in kind or "Could not guard" in text:
        reason = "data-dependent control flow: Python branches on a tensor value"
        advice = (
            "replace the branch with tensor ops (torch.where, masks) or torch.cond, "
            "and keep shapes independent of tensor values"
        )
    elif "Constraints violated" in text or "specialized" in text:
        reason = "a dynamic dim (batch, tokens or cache length) was forced to a constant"
        advice = "avoid code that asserts a fixed batch or sequence length"
    elif "not a known type" in text or "pytree" in text:
        reason = "forward returns an object torch.export cannot flatten"
        advice = "return tensors or tuples of tensors (logits, new_kv) as the README's convention says"
    else:
        reason = f"{kind}"
        advice = (
            "check that forward follows the README's convention and that every op has a "
            "meta-device implementation"
        )
    return (
        f"torch.export could not trace {what}{module_hint}: {reason}. "
        f"torch said: {_first_sentence(text)}. What to do: {advice}."
    )


def _first_sentence(text: str, limit: int = 300) -> str:
    """torch's messages run on into graph dumps and links; the head says what went wrong."""
    head = re.split(r"(?<=\.)\s+(?=[A-Z])|\s+\((?=unhinted|size-like)", text, maxsplit=1)[0]
    head = head.rstrip(" .:")
    return head if len(head) <= limit else head[: limit - 3] + "..."


def capture(
    module: torch.nn.Module,
    kwargs: Mapping[str, Any],
    *,
    what: str = "the model",
    strip_prefix: str = "",
    source: Mapping[str, Any] | None = None,
) -> Graph:
    """Trace `module(**kwargs)` and return its IR graph.

    `strip_prefix` drops a wrapper's attribute from module paths (an adapter around a Hugging
    Face model). `source` is stored in `graph.meta["source"]`.
    """
    t0 = time.perf_counter()
    kwargs = _ordered_kwargs(module, kwargs)
    ep = export_module(module, kwargs, what=what)
    graph = _convert(ep, kwargs, strip_prefix=strip_prefix)
    aliases = _tied_aliases(module, strip_prefix)
    # Tied weights: count the handle the program reads first; the others are tied to it.
    first_use: dict[str, int] = {}
    for i, op in enumerate(graph.ops):
        for v in op.inputs:
            first_use.setdefault(v, i)
    by_name = {p.name: v for v, p in graph.params.items()}
    params = {}
    for v, p in graph.params.items():
        names = aliases.get(p.name, ())
        handles = sorted(
            [v] + [by_name[n] for n in names if n in by_name],
            key=lambda h: (first_use.get(h, len(graph.ops)), h),
        )
        tied_to = handles[0] if handles[0] != v else ""
        params[v] = replace(p, aliases=names, tied_to=tied_to)
    graph.params = params
    graph.meta["source"] = dict(source or {})
    graph.meta["kv_cache_traced"] = any(n.startswith("past_kv") for n in graph.inputs)
    graph.meta["capture_seconds"] = time.perf_counter() - t0
    return graph


def _sympy_symbol(role: str) -> sympy.Symbol:
    """The sympy symbol export's symbols are renamed to before conversion (B, T or L)."""
    if role not in WORKLOAD_SYMBOLS:
        raise CaptureError(f"internal: dim role {role!r} is not one of {sorted(WORKLOAD_SYMBOLS)}")
    return sympy.Symbol(role, integer=True, positive=True)


def _symbol_map(
    ep: torch.export.ExportedProgram, kwargs: Mapping[str, Any]
) -> tuple[dict[sympy.Symbol, sympy.Symbol], list[str], dict[str, str]]:
    sig = ep.graph_signature
    user_placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in sig.user_inputs]
    leaves = [(name, leaf) for name, leaf in _leaf_names(kwargs) if isinstance(leaf, torch.Tensor)]
    if len(leaves) != len(user_placeholders):
        raise CaptureError(
            f"internal: {len(leaves)} tensor inputs but {len(user_placeholders)} graph inputs"
        )
    symbol_map: dict[sympy.Symbol, sympy.Symbol] = {}
    input_names: list[str] = []
    rename: dict[str, str] = {}
    for (name, leaf), node in zip(leaves, user_placeholders, strict=True):
        rename[node.name] = name
        input_names.append(name)
        val = node.meta["val"]
        for dim, role in dim_roles_for(name, leaf).items():
            size = val.shape[dim]
            if isinstance(size, torch.SymInt):
                expr = sympy.sympify(size.node.expr)
                if isinstance(expr, sympy.Symbol):
                    symbol_map.setdefault(expr, _sympy_symbol(role))
    return symbol_map, input_names, rename


def _convert(
    ep: torch.export.ExportedProgram, kwargs: Mapping[str, Any], *, strip_prefix: str
) -> Graph:
    sig = ep.graph_signature
    symbol_map, input_names, rename = _symbol_map(ep, kwargs)
    conv = _Converter(symbol_map)

    state = dict(ep.state_dict)
    state.update(getattr(ep, "constants", {}) or {})
    param_of = dict(sig.inputs_to_parameters)
    buffer_of = dict(sig.inputs_to_buffers)
    const_of = dict(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
    non_persistent = set(getattr(sig, "non_persistent_buffers", ()) or ())

    def clean(fqn: str) -> str:
        if strip_prefix and fqn.startswith(strip_prefix + "."):
            return fqn[len(strip_prefix) + 1 :]
        return fqn

    values: dict[str, TensorSpec] = {}
    params: dict[str, ParamSpec] = {}
    ops: list[Op] = []
    sym_nodes: dict[str, Polynomial] = {}
    op_namespaces: dict[str, str] = {}
    tuple_outputs: dict[str, list[str]] = {}
    outputs: list[str] = []
    output_leaves: list[str | None] = []  # per leaf of forward's return: graph value or None

    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder":
            name = rename.get(node.name, node.name)
            if isinstance(val, torch.Tensor):
                values[name] = conv.spec(val)
            fqn = param_of.get(node.name) or buffer_of.get(node.name) or const_of.get(node.name)
            if fqn is not None:
                t = state.get(fqn)
                shape = tuple(int(d) for d in (t.shape if t is not None else val.shape))
                params[name] = ParamSpec(
                    name=clean(fqn),
                    value=name,
                    shape=shape,
                    dtype=str((t if t is not None else val).dtype).removeprefix("torch."),
                    is_buffer=node.name not in param_of,
                    persistent=fqn not in non_persistent,
                )
            continue
        if node.op == "output":
            flat, _ = pytree.tree_flatten(node.args[0])
            for a in flat:
                if isinstance(a, torch.fx.Node):
                    outputs.append(rename.get(a.name, a.name))
                    output_leaves.append(outputs[-1])
                else:
                    output_leaves.append(None)
            continue
        if node.op == "get_attr":
            raise CaptureError(
                f"the traced graph has a sub-graph ({node.target}) from a higher-order op; "
                "helixplan traces under torch.no_grad() to avoid these. Remove autocast or "
                "torch.cond regions from forward, or report the model to the developers."
            )
        if node.op != "call_function":
            continue
        target = _target_name(node.target)
        if namespace := _target_namespace(node.target):
            op_namespaces[target] = namespace
        if isinstance(val, torch.SymInt) or (target.split(".")[0] in NOISE_TARGETS):
            if isinstance(val, (torch.SymInt, int)):
                sym_nodes[node.name] = conv.expr(val)
            continue
        if target == "getitem":
            src, idx = node.args
            parts = tuple_outputs.get(src.name)
            if parts is not None and isinstance(val, torch.Tensor):
                rename[node.name] = parts[idx]
            continue
        if target in ("to", "to.dtype", "to.dtype_layout", "to.device", "_to_copy") and _is_noop_to(node):
            rename[node.name] = rename.get(node.args[0].name, node.args[0].name)
            continue
        out_names: list[str]
        if isinstance(val, torch.Tensor):
            out_names = [node.name]
            values[node.name] = conv.spec(val)
        elif isinstance(val, (tuple, list)):
            out_names = []
            for i, v in enumerate(val):
                vname = f"{node.name}_{i}"
                out_names.append(vname)
                if isinstance(v, torch.Tensor):
                    values[vname] = conv.spec(v)
            tuple_outputs[node.name] = out_names
        else:
            out_names = []
        inputs = tuple(
            dict.fromkeys(
                rename.get(a.name, a.name)
                for a in node.all_input_nodes
                if a.name not in sym_nodes
            )
        )
        path, types = _module_info(node, strip_prefix)
        args = conv.arg(node.args, rename, sym_nodes)
        kw = conv.arg(dict(node.kwargs), rename, sym_nodes)
        ops.append(
            Op(
                name=node.name,
                target=target,
                inputs=tuple(i for i in inputs if i in values),
                outputs=tuple(out_names),
                module_path=path,
                module_types=types,
                attrs={"args": args, "kwargs": kw},
            )
        )

    return Graph(
        ops=ops,
        values=values,
        inputs=input_names,
        outputs=outputs,
        params=params,
        meta={
            "output_tree": _output_tree(ep),
            "output_leaves": output_leaves,
            "op_namespaces": dict(sorted(op_namespaces.items())),
        },
    )


def _output_tree(ep: torch.export.ExportedProgram) -> str:
    """forward's return structure (a serialized pytree spec) so that a runtime can hand back
    the same structure; "" when torch cannot serialize it (a custom output class)."""
    try:
        return pytree.treespec_dumps(ep.call_spec.out_spec)
    except (NotImplementedError, TypeError, ValueError):  # a custom output class
        return ""


def _is_noop_to(node: torch.fx.Node) -> bool:
    """A `.to` whose input and output have the same dtype and device does nothing."""
    src = node.args[0] if node.args else None
    if not isinstance(src, torch.fx.Node):
        return False
    a, b = src.meta.get("val"), node.meta.get("val")
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.dtype == b.dtype
        and a.device == b.device
    )


def _tied_aliases(module: torch.nn.Module, strip_prefix: str) -> dict[str, tuple[str, ...]]:
    """Parameter name -> other names of the same tensor (tied weights share a placeholder)."""
    by_id: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if strip_prefix and name.startswith(strip_prefix + "."):
            name = name[len(strip_prefix) + 1 :]
        by_id.setdefault(id(p), []).append(name)
    out: dict[str, tuple[str, ...]] = {}
    for names in by_id.values():
        for n in names:
            out[n] = tuple(x for x in names if x != n)
    return out


# ---------------------------------------------------------------------------- torch.compile
# Dynamo's FX graph (torch-level calls; placeholders are the model's parameters, named
# `l_self_modules_layers_modules_0_..._parameters_weight_`, and the user's inputs,
# `l_input_ids_`) as a module that `capture` can export: parameters registered under their
# original names, forward replaying the graph through an `fx.Interpreter` with node
# metadata preserved, so every op keeps the `nn_module_stack` Dynamo recorded.

_PARAM_KINDS = ("_parameters_", "_buffers_")


def placeholder_target(name: str) -> tuple[str, str]:
    """("param" | "buffer", fqn) for a Dynamo parameter placeholder, else ("input", name):
    `l_self_modules_mlp_modules_up_proj_parameters_weight_` -> ("param", "mlp.up_proj.weight"),
    `l_input_ids_` -> ("input", "input_ids")."""
    body = name.removeprefix("l_").removesuffix("_")
    if body.startswith("self_"):
        for kind in _PARAM_KINDS:
            if kind in body:
                modules, attr = body.rsplit(kind, 1)
                modules = modules.removeprefix("self")
                path = modules.removeprefix("_modules_").split("_modules_") if modules else []
                return ("param" if kind == "_parameters_" else "buffer"), ".".join([*path, attr])
    return "input", body


class _Replay(torch.nn.Module):
    """The captured FX graph as a module with the model's parameter names."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]):
        super().__init__()
        self._gm = [gm]  # a list: not a submodule, so its (empty) state stays out of ours
        self.slots: list[tuple[str, str]] = []
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for node, value in zip(placeholders, example_inputs, strict=True):
            kind, target = placeholder_target(node.name)
            if not isinstance(value, torch.Tensor):
                raise CaptureError(
                    f"the captured graph takes a non-tensor input {node.name!r} ({value!r}): "
                    "Dynamo made a shape dynamic. Compile with torch.compile(..., dynamic=False) "
                    "so that each input shape is planned as its own graph"
                )
            if kind != "input":
                *path, attr = target.split(".")
                owner: torch.nn.Module = self
                for part in path:
                    if not hasattr(owner, part):
                        owner.add_module(part, torch.nn.Module())
                    owner = getattr(owner, part)
                if kind == "param":
                    param = value if isinstance(value, torch.nn.Parameter) else torch.nn.Parameter(value)
                    owner.register_parameter(attr, param)
                else:
                    owner.register_buffer(attr, value)
            self.slots.append((kind, target))
        for node in gm.graph.nodes:  # module paths as in the model, not Dynamo's L['self']...
            stack = node.meta.get("nn_module_stack")
            if stack:
                node.meta["nn_module_stack"] = {
                    key: (path.removeprefix("L['self']").removeprefix("."), cls)
                    for key, (path, cls) in stack.items()
                }

    @property
    def input_names(self) -> list[str]:
        return [target for kind, target in self.slots if kind == "input"]

    def replay(self, **inputs: torch.Tensor) -> Any:
        state = dict(self.named_parameters(remove_duplicate=False))
        state.update(self.named_buffers(remove_duplicate=False))
        args = [inputs[t] if kind == "input" else state[t] for kind, t in self.slots]
        with torch.fx.traceback.preserve_node_meta():
            return torch.fx.Interpreter(self._gm[0]).run(*args)


def replay_module(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> _Replay:
    """A module whose `forward(**inputs)` has the captured graph's input names as keyword
    arguments (torch.export reads forward's signature)."""
    probe = _Replay(gm, example_inputs)

    def forward(self: _Replay, **inputs: torch.Tensor) -> Any:
        return self.replay(**inputs)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    forward.__signature__ = inspect.Signature(
        [self_param] + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in probe.input_names]
    )
    cls = type("CapturedGraph", (_Replay,), {"forward": forward})
    return cls(gm, example_inputs)
