"""Tensor metadata with symbolic shapes.

Shapes are tuples of `Polynomial`s (ir/polynomial.py) over the workload symbols B (batch),
T (new tokens) and L (cached KV length); a concrete dimension is a constant polynomial.
Plain polynomials rather than sympy: a warm plan never imports sympy (see ir/polynomial.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ir.polynomial import Polynomial, as_polynomial, product, symbol

B, T, L = symbol("B"), symbol("T"), symbol("L")
WORKLOAD_SYMBOLS: dict[str, Polynomial] = {"B": B, "T": T, "L": L}

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

    shape: tuple[Polynomial, ...]
    dtype: str

    @property
    def numel(self) -> Polynomial:
        return product(self.shape)

    @property
    def nbytes(self) -> Polynomial:
        return self.numel * Fraction(dtype_bytes(self.dtype))

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


def evaluate(expr: Polynomial | int, **values: int) -> int:
    """Evaluate a formula in B, T, L at concrete values (missing symbols are an error); a
    fractional value truncates, as sympy's int() did."""
    e = as_polynomial(expr)
    unknown = set(values) - set(WORKLOAD_SYMBOLS)
    if unknown:
        raise KeyError(f"unknown workload symbols {sorted(unknown)}; known: {sorted(WORKLOAD_SYMBOLS)}")
    result = e.subs(values)
    if result.free_symbols:
        missing = sorted(result.free_symbols)
        raise ValueError(f"formula {e} still depends on {missing} after substituting {values}")
    return int(result)
