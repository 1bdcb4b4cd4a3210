"""Group identical repeated layers by a structural signature.

Two blocks share a group when they have the same kind, role (name without the layer index), dims, traits, op sequence (targets
and output shapes) and parameter shapes. Later passes decide one strategy per group.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import ClassVar

from ir.graph import Block, Graph


def block_role(block: Block) -> str:
    """The block's name with its layer index erased (`layers.*.norm_attn`, `final_norm`)."""
    return re.sub(r"^layers\.\d+\.", "layers.*.", block.name)


def block_signature(graph: Graph, block: Block) -> str:
    parts = [block.kind, block_role(block), repr(sorted(block.dims.items())), repr(sorted(block.traits.items()))]
    for op in graph.iter_ops(block.ops):
        shapes = ",".join(str(graph.values[v]) for v in op.outputs if v in graph.values)
        parts.append(f"{op.target}:{shapes}")
    parts.extend(str(graph.params[v].shape) for v in block.params)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GroupRepeated:
    """Post: every block has `signature` and `group`; blocks with equal signatures share the
    group `KIND.N` (N counts distinct signatures of that kind in program order)."""

    name: ClassVar[str] = "group-repeated"

    def run(self, graph: Graph) -> Graph:
        names: dict[str, str] = {}
        per_kind: dict[str, int] = {}
        blocks = []
        for b in graph.blocks:
            sig = block_signature(graph, b)
            if sig not in names:
                n = per_kind.get(b.kind, 0)
                per_kind[b.kind] = n + 1
                names[sig] = f"{b.kind}.{n}"
            blocks.append(replace(b, signature=sig, group=names[sig]))
        return replace(graph, blocks=blocks)
