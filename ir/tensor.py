"""Tensor metadata with symbolic shapes.

Shapes are tuples of sympy expressions over the workload symbols B (batch), T (new tokens)
and L (cached KV length); a concrete dimension is a sympy Integer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import mul

import sympy

B, T, L = sympy.symbols("B T L", integer=True, positive=True)
WORKLOAD_SYMBOLS: dict[str, sympy.Symbol] = {"B": B, "T": T, "L": L}

DTYPE_BYTES: dict[str, float] = {
    "float64": 8,
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "fp8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "fp4": 0.5,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of a dtype name (torch names without the `torch.` prefix)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise KeyError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class TensorSpec:
    """Symbolic shape and dtype of one value in the graph."""

    shape: tuple[sympy.Expr, ...]
    dtype: str

    @property
    def numel(self) -> sympy.Expr:
        return reduce(mul, self.shape, sympy.Integer(1))

    @property
    def nbytes(self) -> sympy.Expr:
        return self.numel * sympy.nsimplify(dtype_bytes(self.dtype))

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


def evaluate(expr: sympy.Expr | int, **values: int) -> int:
    """Evaluate a formula in B, T, L at concrete values (missing symbols are an error)."""
    e = sympy.sympify(expr)
    subs = {WORKLOAD_SYMBOLS[k]: v for k, v in values.items()}
    result = e.subs(subs)
    if result.free_symbols:
        missing = sorted(str(s) for s in result.free_symbols)
        raise ValueError(f"formula {e} still depends on {missing} after substituting {values}")
    return int(result)
