"""Which workload symbols (B, T, L) a lowered program's local shapes and steps use, and how
the generated program reads each one at run time: from a dim of a graph input, times the
number of ranks that dim is split over."""

from __future__ import annotations

import functools
from typing import Any

from ir.layout import LoweringError
from ir.polynomial import Polynomial, as_polynomial
from ir.rank_program import BlockProgram, Compute, ProgramInput, SymbolSource
from ir.tensor import WORKLOAD_SYMBOLS
from passes.lower.builder import Builder


def symbol_sources(
    builder: Builder, inputs: list[ProgramInput], renamed_from: dict[str, str]
) -> tuple[SymbolSource, ...]:
    """How the generated program reads each workload symbol a local shape or step uses. A
    block copied from another (`renamed_from`) has the same arguments and is not walked."""
    used: set[str] = set()
    # copied blocks share their record's shape tuples: distinct objects first, then values
    shapes = {id(v.local_shape): v.local_shape for v in builder.values.values()}
    for shape in set(shapes.values()):
        used |= _shape_symbols(shape)
    for item in builder.items:
        if isinstance(item, BlockProgram) and item.name in renamed_from:
            continue
        for step in item.steps:
            if isinstance(step, Compute):
                used |= _free_symbols((step.args, step.kwargs))
    out = []
    for sym in sorted(used):
        symbol = WORKLOAD_SYMBOLS.get(sym)
        if symbol is None:
            raise LoweringError(f"a shape depends on symbol {sym!r}, which is not B, T or L")
        for pin in inputs:
            spec = builder.graph.values[pin.name]
            d = next((i for i, s in enumerate(spec.shape) if s == symbol), None)
            if d is None:
                continue
            layout = builder.values[pin.local].layout
            factor = 1
            for a in layout.axes_sharding(d):
                factor *= builder.sizes[a]
            out.append(SymbolSource(symbol=sym, input=pin.name, dim=d, factor=factor))
            break
        else:
            raise LoweringError(f"no graph input has a dim of size {sym}; cannot bind it at run time")
    return tuple(out)


@functools.lru_cache(maxsize=1 << 12)
def _shape_symbols(shape: tuple[Polynomial, ...]) -> frozenset[str]:
    return frozenset(s for d in shape for s in as_polynomial(d).free_symbols)


def _free_symbols(x: Any) -> set[str]:
    if isinstance(x, Polynomial):
        return set(x.free_symbols)
    if isinstance(x, (list, tuple)):
        return set().union(*(_free_symbols(v) for v in x)) if x else set()
    if isinstance(x, dict):
        return _free_symbols(list(x.values()))
    return set()
