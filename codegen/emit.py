"""Render per-rank program steps as Python source lines.

Expressions: graph values become identifiers, polynomial sizes become integer arithmetic over
B, T, L (`B // 2`), dtype names become `torch.<dtype>`, and common aten ops are written the
way a person would (`F.linear(x, w)`, `x.view([...])`, `a + b`); the rest call
`torch.ops.aten.<op>.<overload>` directly. Collectives are written out as the
torch.distributed calls they are: issue with `async_op=True`, `.wait()` where scheduled.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from codegen.context import Line
from ir.graph import ValueRef
from ir.polynomial import Polynomial, as_polynomial, term_text
from ir.rank_program import (
    AxisRank,
    Collective,
    Compute,
    LocalShard,
    LocalValue,
    MeshGroupsRef,
    RankProgram,
    Step,
    Wait,
)

RESERVED = frozenset(
    {"B", "T", "L", "w", "pg", "device", "torch", "F", "dist", "comm", "inputs", "weights", "work"}
    | set(keyword.kwlist)
    | {"input", "id", "len", "list", "dict", "type", "sum", "min", "max", "slice", "range", "all", "any"}
    | {"pow", "abs", "round", "iter", "next", "map", "filter", "zip", "format", "hash", "object"}
)
DTYPES = frozenset(
    {
        "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
        "bool", "float8_e4m3fn", "float8_e5m2", "complex64",
    }
)
TORCH_ENUMS = frozenset({"strided", "contiguous_format", "preserve_format", "channels_last"})


def identifier(text: str) -> str:
    text = re.sub(r"[^0-9A-Za-z_]", "_", str(text)).strip("_") or "v"
    if text[0].isdigit():
        text = f"v_{text}"
    return f"{text}_" if text in RESERVED else text


class Namer:
    """Unique identifiers from readable bases (`q_proj`, `q_proj_1`, ...)."""

    def __init__(self, taken: set[str] | None = None):
        self.taken = set(taken or ())

    def fresh(self, base: str) -> str:
        base = identifier(base)
        name, n = base, 1
        while name in self.taken:
            name = f"{base}_{n}"
            n += 1
        self.taken.add(name)
        return name


def py_expr(e: Any) -> str:
    """A size (int or Polynomial) as Python integer arithmetic."""
    if isinstance(e, int) and not isinstance(e, bool):
        return str(e)
    return _polynomial_text(as_polynomial(e))


@functools.lru_cache(maxsize=65536)
def _polynomial_text(p: Polynomial) -> str:
    """py_expr of a polynomial; cached since every repeated layer has the same sizes. A
    rational polynomial is written `numerator // denominator`, the numerator with its
    common monomial factored out (`B*(T + 1) // 2`); a sum lists its terms by their
    printed text, constant last, and subtracts negative ones (`L + T - 1`)."""
    terms = p.terms
    den = math.lcm(*(c.denominator for c in terms.values() if isinstance(c, Fraction)))
    if den != 1:
        return f"{_paren(_numerator_text((p * den).terms))} // {den}"
    return _sum_text(terms)


def _sum_text(terms: dict) -> str:
    if len(terms) <= 1:
        ((mono, c),) = terms.items() if terms else (((), 0),)
        return _product_text(mono, c)
    ordered = sorted(terms.items(), key=lambda mc: (not mc[0], term_text(*mc)))
    out = _product_text(*ordered[0])
    for mono, c in ordered[1:]:
        out += f" - {_paren(_product_text(mono, -c))}" if c < 0 else f" + {_product_text(mono, c)}"
    return out


def _product_text(mono: tuple, c: Any, rest: str = "") -> str:
    """`c*B*T*(L**2)*(rest)`: symbols first, then powers, each by name (sympy's factor
    order); a power is parenthesized inside a product, as the sympy-era writer did."""
    parts = [n for n, e in mono if e == 1] + [f"{n}**{e}" for n, e in mono if e != 1]
    parts += [rest] if rest else []
    if not parts:
        return str(c)
    if len(parts) == 1 and c == 1:
        return parts[0]
    parts = [_paren(x) for x in parts]
    if c == -1:
        return "-" + "*".join(parts)
    return "*".join(([str(c)] if c != 1 else []) + parts)


def _numerator_text(terms: dict) -> str:
    if len(terms) == 1:
        return _sum_text(terms)
    common = min(({n: e for n, e in mono} for mono in terms), key=len)
    for mono in terms:
        exps = dict(mono)
        common = {n: min(e, exps[n]) for n, e in common.items() if n in exps}
    if not common:
        return _sum_text(terms)
    content = math.gcd(*terms.values())
    rest = {
        tuple((n, e - common.get(n, 0)) for n, e in mono if e != common.get(n, 0)): c // content
        for mono, c in terms.items()
    }
    return _product_text(tuple(sorted(common.items())), content, _sum_text(rest))


def _paren(text: str) -> str:
    return text if re.fullmatch(r"[\w.\[\]\"']+", text) else f"({text})"


@functools.lru_cache(maxsize=1 << 14)
def shape_text(shape: tuple) -> str:
    """`[B, 128]`; cached: a deep model's layers repeat the same few local shapes."""
    return "[" + ", ".join(py_expr(d) for d in shape) + "]"


@dataclass
class RenderState:
    """What a rendered function needs from outside: symbols, the device, process groups."""

    names: dict[str, str]
    symbols: set[str] = field(default_factory=set)
    uses_device: bool = False
    uses_pg: bool = False


class Renderer:
    def __init__(self, program: RankProgram, state: RenderState, *, weight_expr: dict[str, str]):
        self.program = program
        self.state = state
        self.weight_expr = weight_expr

    # -- expressions --------------------------------------------------------------------
    def value(self, name: str) -> str:
        if name in self.weight_expr:
            return self.weight_expr[name]
        return self.state.names[name]

    def arg(self, x: Any, key: str = "") -> str:
        if isinstance(x, ValueRef):
            return self.value(x.name)
        if isinstance(x, AxisRank):
            self.state.uses_pg = True
            return f'pg.coord["{x.axis}"]'
        if isinstance(x, MeshGroupsRef):
            self.state.uses_pg = True
            return "pg"
        if isinstance(x, bool) or x is None:
            return repr(x)
        if isinstance(x, Polynomial):
            self.state.symbols |= x.free_symbols
            return py_expr(x)
        if isinstance(x, int):
            return repr(x)
        if isinstance(x, float):
            if math.isinf(x):
                return 'float("inf")' if x > 0 else 'float("-inf")'
            if math.isnan(x):
                return 'float("nan")'
            return repr(x)
        if isinstance(x, str):
            if key == "device":
                self.state.uses_device = True
                return "device"
            if x in DTYPES or x in TORCH_ENUMS:
                return f"torch.{x}"
            return repr(x)
        if isinstance(x, list):
            return "[" + ", ".join(self.arg(v) for v in x) + "]"
        if isinstance(x, tuple):
            inner = ", ".join(self.arg(v) for v in x)
            return f"({inner},)" if len(x) == 1 else f"({inner})"
        raise ValueError(f"cannot write argument {x!r} ({type(x).__name__}) as Python")

    def call(self, fn: str, args: tuple, kwargs: dict) -> str:
        parts = [self.arg(a) for a in args]
        parts += [f"{k}={self.arg(v, k)}" for k, v in kwargs.items()]
        return f"{fn}({', '.join(parts)})"

    def compute_expr(self, step: Compute) -> str:
        t, a, kw = step.target, list(step.args), dict(step.kwargs)
        binary = {
            "add.Tensor": "+", "sub.Tensor": "-", "mul.Tensor": "*", "div.Tensor": "/",
            "__and__.Tensor": "&", "__or__.Tensor": "|", "__xor__.Tensor": "^",
            "eq.Tensor": "==", "eq.Scalar": "==", "ne.Tensor": "!=", "ne.Scalar": "!=",
            "lt.Tensor": "<", "lt.Scalar": "<", "le.Tensor": "<=", "le.Scalar": "<=",
            "gt.Tensor": ">", "gt.Scalar": ">", "ge.Tensor": ">=", "ge.Scalar": ">=",
            "pow.Tensor_Scalar": "**", "pow.Scalar": "**", "pow.Tensor_Tensor": "**",
        }
        if t in binary and len(a) == 2 and not kw and (
            isinstance(a[0], ValueRef) or isinstance(a[1], ValueRef)
        ):
            return f"{_paren(self.arg(a[0]))} {binary[t]} {_paren(self.arg(a[1]))}"
        if t == "neg" and len(a) == 1:
            return f"-{self.arg(a[0])}"
        if t == "linear":
            return self.call("F.linear", tuple(a), kw)
        if t == "moe_dispatch":
            # the all-to-alls run over the model group the kernel is given (`pg.tp`, ...)
            self.state.uses_pg = True
            group = kw.pop("group")
            return self.call(t, tuple(a), kw)[:-1] + f", group=pg.{group})"
        if t in (
            "vocab_embedding", "helix_partial_attention", "helix_combine",
            "ring_attention_pass_kv", "ring_attention_pass_q",
            "moe_experts", "mla_attention", "mla_helix_partial", "mla_helix_combine",
        ):
            return self.call(t, tuple(a), kw)
        if t == "embedding" and len(a) == 2 and not kw:
            return f"F.embedding({self.arg(a[1])}, {self.arg(a[0])})"
        if t == "rms_norm":
            return self.call("F.rms_norm", tuple(a), kw)
        if t == "layer_norm" and not kw:
            return self.call("F.layer_norm", tuple(a[:5]), {})
        if t == "scaled_dot_product_attention":
            return self.call("F.scaled_dot_product_attention", tuple(a), kw)
        if t in ("silu", "relu", "gelu", "sigmoid", "tanh") and isinstance(a[0], ValueRef):
            fn = {"sigmoid": "torch.sigmoid", "tanh": "torch.tanh"}.get(t, f"F.{t}")
            return self.call(fn, tuple(a), kw)
        methods = {
            "view": "view", "reshape": "reshape", "_unsafe_view": "reshape",
            "transpose.int": "transpose", "permute": "permute", "unsqueeze": "unsqueeze",
            "expand": "expand", "flatten.using_ints": "flatten", "chunk": "chunk",
            "squeeze.dim": "squeeze", "contiguous": "contiguous", "clone": "clone",
            "cos": "cos", "sin": "sin", "exp": "exp", "rsqrt": "rsqrt", "sqrt": "sqrt",
            "reciprocal": "reciprocal", "to.dtype": "to", "split.Tensor": "split", "t": "t",
            "select.int": "select", "unbind.int": "unbind", "float": "float",
        }
        if t in methods and a and isinstance(a[0], ValueRef):
            return f"{_paren(self.arg(a[0]))}.{self.call(methods[t], tuple(a[1:]), kw)}"
        if t == "slice.Tensor":
            return self.slice_expr(a)
        if t in ("cat", "stack"):
            return self.call(f"torch.{t}", tuple(a), kw)
        if t.startswith("arange"):
            kw.pop("pin_memory", None)
            kw.pop("layout", None)
            return self.call("torch.arange", tuple(a), kw)
        return self.call(aten_callable(t, self.program.meta.get("op_namespaces")), tuple(a), kw)

    def slice_expr(self, a: list) -> str:
        x = self.arg(a[0])
        dim = a[1] if len(a) > 1 else 0
        start = a[2] if len(a) > 2 else None
        end = a[3] if len(a) > 3 else None
        step = a[4] if len(a) > 4 else 1
        if isinstance(end, int) and end >= 2**62:
            end = None
        if start == 0:
            start = None
        if start is None and end is None and step in (None, 1):
            return x
        rank = len(self.program.values[a[0].name].local_shape)
        dim = dim + rank if dim < 0 else dim
        s = (self.arg(start) if start is not None else "") + ":" + (self.arg(end) if end is not None else "")
        if step not in (None, 1):
            s += f":{self.arg(step)}"
        return f"{_paren(x)}[{', '.join([':'] * dim + [s])}]"

    # -- steps ----------------------------------------------------------------------------
    def layout_comment(self, v: LocalValue) -> str:
        return f"{shape_text(v.local_shape)} {v.layout.describe()}"

    def step_lines(self, step: Step, define, readers: dict[str, int]) -> list[Line]:
        """`define(local, base=None)` names a new local value in the current scope."""
        values = self.program.values
        if isinstance(step, Compute):
            expr = self.compute_expr(step)
            if len(step.outputs) == 1 and expr in self.state.names.values():
                self.state.names[step.outputs[0]] = expr  # a no-op (full slice): alias it
                return []
            outs = [define(o) for o in step.outputs]
            lhs = outs[0] if len(outs) == 1 else ", ".join(outs)
            return [Line(f"{lhs} = {expr}", self.layout_comment(values[step.outputs[0]]))]
        self.state.uses_pg = True
        if isinstance(step, LocalShard):
            out = define(step.output, f"{identifier(self.value(step.input))}_local")
            return [
                Line(
                    f'{out} = local_shard({self.value(step.input)}, {step.dim}, pg, "{step.axis}")',
                    f"{self.layout_comment(values[step.output])} (slice, no communication)",
                )
            ]
        if isinstance(step, Collective):
            suffix = {"all_reduce": "sum", "all_gather": "full", "reduce_scatter": "rs", "all_to_all": "a2a"}
            out = define(step.output, f"{identifier(self.value(step.input))}_{suffix[step.kind]}")
            handle = define(step.handle)
            src = self.value(step.input)
            group = f"pg.{step.axis}"
            before = _placement_on(values[step.input].layout, step.axis)
            after = _placement_on(values[step.output].layout, step.axis)
            what = f"{before} -> {after} over {step.axis.replace('_', '×')}"
            if step.kind == "all_reduce":
                copy = ".clone()" if readers.get(step.input, 0) > 1 else ".contiguous()"
                return [
                    Line(f"{out} = {src}{copy}"),
                    Line(f"{handle} = comm.all_reduce({out}, group={group}, async_op=True)", what),
                ]
            if step.kind == "all_gather":
                buf = define(f"{step.output}_parts")
                return [
                    Line(f"{buf} = {src}.new_empty((pg.size_{step.axis} * {src}.shape[0], *{src}.shape[1:]))"),
                    Line(
                        f"{handle} = comm.all_gather_into_tensor({buf}, {src}.contiguous(), group={group}, async_op=True)",
                        what,
                    ),
                ]
            if step.kind == "reduce_scatter":
                send = define(f"{step.output}_send")
                buf = define(f"{step.output}_parts")
                return [
                    Line(f"{send} = {src}.movedim({step.dst_dim}, 0).contiguous()"),
                    Line(f"{buf} = {send}.new_empty((({send}.shape[0] // pg.size_{step.axis}), *{send}.shape[1:]))"),
                    Line(
                        f"{handle} = comm.reduce_scatter_tensor({buf}, {send}, group={group}, async_op=True)",
                        what,
                    ),
                ]
            if step.kind == "all_to_all":
                send = define(f"{step.output}_send")
                buf = define(f"{step.output}_parts")
                return [
                    Line(f"{send} = torch.stack({src}.chunk(pg.size_{step.axis}, {step.dst_dim}))"),
                    Line(f"{buf} = torch.empty_like({send})"),
                    Line(
                        f"{handle} = comm.all_to_all_single({buf}, {send}, group={group}, async_op=True)",
                        what,
                    ),
                ]
            raise ValueError(f"unknown collective {step.kind}")
        if isinstance(step, Wait):
            issue = self.collective_of(step.handle)
            handle = self.state.names[step.handle]
            out = self.state.names[step.output]
            lines = [Line(f"{handle}.wait()")]
            if issue.kind == "all_gather":
                buf = self.state.names[f"{step.output}_parts"]
                lines.append(
                    Line(
                        f"{out} = merge_parts({buf}, pg.size_{issue.axis}, {issue.src_dim})",
                        self.layout_comment(values[step.output]),
                    )
                )
            elif issue.kind == "reduce_scatter":
                buf = self.state.names[f"{step.output}_parts"]
                lines.append(
                    Line(f"{out} = {buf}.movedim(0, {issue.dst_dim})", self.layout_comment(values[step.output]))
                )
            elif issue.kind == "all_to_all":
                buf = self.state.names[f"{step.output}_parts"]
                lines.append(
                    Line(f"{out} = torch.cat({buf}.unbind(0), {issue.src_dim})", self.layout_comment(values[step.output]))
                )
            else:
                lines[0] = Line(lines[0].code, self.layout_comment(values[step.output]))
            return lines
        raise ValueError(f"unknown step {step!r}")

    def collective_of(self, handle: str) -> Collective:
        return _collectives_by_handle(self.program)[handle]


_COLLECTIVES: dict[int, tuple[RankProgram, dict[str, Collective]]] = {}


def _collectives_by_handle(program: RankProgram) -> dict[str, Collective]:
    """Handle -> collective, indexed once per program (a deep model waits on hundreds)."""
    hit = _COLLECTIVES.get(id(program))
    if hit is None or hit[0] is not program:
        index: dict[str, Collective] = {}
        for s in program.steps():
            if isinstance(s, Collective):
                index.setdefault(s.handle, s)
        _COLLECTIVES.clear()
        hit = _COLLECTIVES[id(program)] = (program, index)
    return hit[1]


def _placement_on(layout, axis: str):
    """The placement on `axis`; for a joined axis (`kvp_tp`), on its parts (alike)."""
    return layout.on(axis) if axis in layout.axes else layout.on(axis.split("_")[-1])


def aten_callable(target: str, namespaces: dict[str, str] | None = None) -> str:
    """`torch.ops.NS.OP.OVERLOAD` for a captured op name (`mm`, `sum.dim_IntList`,
    `prims.iota.default`). The namespace recorded at capture answers whether a two-part name
    is an aten overload or a foreign op; only a name capture did not record (an op a lowering
    rule made up) asks torch, whose import costs a second."""
    name, _, overload = target.partition(".")
    namespace = (namespaces or {}).get(target)
    if namespace is None:
        import torch

        namespace = "aten" if hasattr(torch.ops.aten, name) else ""
    if namespace == "aten":
        return f"torch.ops.aten.{name}.{overload or 'default'}"
    ns, _, rest = target.partition(".")
    op, _, overload = rest.partition(".")
    return f"torch.ops.{ns}.{op}.{overload or 'default'}"


def count_readers(steps: tuple[Step, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in steps:
        for r in s.reads():
            out[r] = out.get(r, 0) + 1
    return out
