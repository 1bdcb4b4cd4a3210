"""Trace a deep model through a few of its layers: the model half of layer deduplication.

torch.export's cost grows with depth while the planner needs each distinct layer only once.
`plan_truncation` finds the layer container (the `nn.ModuleList` with the most children),
gives every child a structural signature and keeps, of each maximal run of consecutive equal
layers, the first two: two, so the trace shows how one layer of a run feeds the next, which
is what `passes.unroll.UnrollLayers` needs to rebuild the full-depth IR. `truncated` swaps
the container for the kept layers while tracing; `truncate_inputs` keeps the matching entries
of per-layer inputs (the `past_kv` tuple with one cache per layer).

A signature is conservative: class, parameter and buffer names/shapes/dtypes, the layer's
repr, and every plain attribute of every submodule (so a sliding-window layer differs from a
full-attention one even with equal weights). Only an int attribute named like an index
(`layer_idx`) that equals the layer's own position is ignored.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Runs of identical layers keep this many: the first, and the second that reads the first.
KEEP_PER_RUN = 2
_INDEX_NAME = re.compile(r"idx|index|layer|number|(^|_)id$", re.IGNORECASE)


@dataclass(frozen=True)
class Truncation:
    """Trace only `kept` (original indices, ascending) of the `num_layers` children of the
    module list at `container` (a module path in the traced module, e.g. `hf.model.layers`)."""

    container: str
    num_layers: int
    kept: tuple[int, ...]

    @property
    def skipped(self) -> int:
        return self.num_layers - len(self.kept)


def find_layer_container(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The `nn.ModuleList` with the most children that is not inside another module list
    (256 experts inside each of 61 layers do not make the experts the layers); ties: the
    first in module order. `passes.recognize` finds the same list in the trace."""
    best: tuple[str, nn.ModuleList] | None = None
    for path, module in model.named_modules():
        nested = any(part.isdigit() for part in path.split("."))
        if isinstance(module, nn.ModuleList) and not nested:
            if best is None or len(module) > len(best[1]):
                best = (path, module)
    return best


def _attr_token(key: str, value: Any, index: int) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (str, float, enum.Enum)):
        return repr(value)
    if isinstance(value, int):
        if value in (index, index + 1) and _INDEX_NAME.search(key):
            return f"<layer index{'+1' if value == index + 1 else ''}>"
        return repr(value)
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__}({','.join(_attr_token(key, v, index) for v in value)})"
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}:{value.dtype}"
    if isinstance(value, torch.dtype):
        return str(value)
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def layer_signature(layer: nn.Module, index: int) -> str:
    """A hash equal for two children of the container only when they are built the same."""
    parts = [repr(layer)]
    for path, module in layer.named_modules(remove_duplicate=False):
        kind = type(module)
        parts.append(f"{path}:{kind.__module__}.{kind.__qualname__}")
        parts.append(f"hooks:{len(module._forward_hooks)},{len(module._forward_pre_hooks)}")
        for key, value in sorted(vars(module).items()):
            if not key.startswith("_"):
                parts.append(f"{path}.{key}={_attr_token(key, value, index)}")
    tensors = [*layer.named_parameters(remove_duplicate=False), *layer.named_buffers(remove_duplicate=False)]
    for name, t in tensors:
        parts.append(f"{name}:{type(t).__name__}{tuple(t.shape)}:{t.dtype}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def plan_truncation(model: nn.Module) -> Truncation | str:
    """The layers to trace, or why the whole model must be traced (a one-line reason)."""
    found = find_layer_container(model)
    if found is None:
        return "the model has no nn.ModuleList of layers"
    path, layers = found
    children = list(layers)
    if len({id(c) for c in children}) < len(children):
        return f"{path} holds the same module more than once"
    inside: dict[int, int] = {}
    for i, child in enumerate(children):
        for t in [*child.parameters(), *child.buffers()]:
            if inside.setdefault(id(t), i) != i:
                return f"layers {inside[id(t)]} and {i} of {path} share a weight"
    prefix = f"{path}."
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if id(t) in inside and not name.startswith(prefix):
            return f"{name} is a weight of layer {inside[id(t)]} of {path} too"
    signatures = [layer_signature(c, i) for i, c in enumerate(children)]
    kept: list[int] = []
    longest = 0
    start = 0
    for i in range(1, len(children) + 1):
        if i == len(children) or signatures[i] != signatures[start]:
            kept.extend(range(start, min(i, start + KEEP_PER_RUN)))
            longest = max(longest, i - start)
            start = i
    if longest <= KEEP_PER_RUN:
        return f"no run of more than {KEEP_PER_RUN} identical layers in {path}"
    return Truncation(container=path, num_layers=len(children), kept=tuple(kept))


def _per_layer_config_lists(model: nn.Module, num_layers: int) -> list[tuple[Any, str, Any]]:
    """(config, attribute, value) of every list in a module's config with one entry per
    layer (Hugging Face `layer_types`), which forwards index by position in the layer list."""
    found: list[tuple[Any, str, Any]] = []
    seen: set[int] = set()
    for module in model.modules():
        config = vars(module).get("config")
        if config is None or id(config) in seen or not hasattr(config, "__dict__"):
            continue
        seen.add(id(config))
        for key, value in vars(config).items():
            if not key.startswith("_") and isinstance(value, (list, tuple)) and len(value) == num_layers:
                found.append((config, key, value))
    return found


@contextlib.contextmanager
def truncated(model: nn.Module, truncation: Truncation) -> Iterator[nn.Module]:
    """`model` with its layer container holding only the kept layers (and per-layer config
    lists only their entries), restored on exit."""
    parent_path, _, attr = truncation.container.rpartition(".")
    parent = model.get_submodule(parent_path)
    full = getattr(parent, attr)
    changed: list[tuple[Any, str, Any]] = []
    try:
        setattr(parent, attr, nn.ModuleList(full[i] for i in truncation.kept))
        for config, key, value in _per_layer_config_lists(model, truncation.num_layers):
            picked = [value[i] for i in truncation.kept]
            try:
                setattr(config, key, picked if isinstance(value, list) else tuple(picked))
            except (AttributeError, TypeError):  # a frozen config: its forward cannot index it
                continue
            changed.append((config, key, value))
        yield model
    finally:
        for config, key, value in reversed(changed):
            setattr(config, key, value)
        setattr(parent, attr, full)


def truncate_inputs(
    kwargs: Mapping[str, Any], truncation: Truncation
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Keep the kept layers' entries of every tuple/list argument with one entry per layer
    (`past_kv`); returns the arguments and the names of those per-layer arguments."""
    out: dict[str, Any] = {}
    per_layer: list[str] = []
    for key, value in kwargs.items():
        if isinstance(value, (tuple, list)) and len(value) == truncation.num_layers:
            picked = [value[i] for i in truncation.kept]
            out[key] = picked if isinstance(value, list) else tuple(picked)
            per_layer.append(key)
        else:
            out[key] = value
    return out, tuple(per_layer)
