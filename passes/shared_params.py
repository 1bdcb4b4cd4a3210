"""Weights read by several blocks: what share of a copy the integer program charges each.

A parameter belongs to the first block that reads it (`Block.params`, `param_count`); other
blocks may read it too — a tied LM head reads the embedding's table, a layer reused at
several depths reads its first use's weights. A reader whose layout differs from the owner's
holds a second copy on every GPU, so blocks are priced one by one with, beside their own
weights, a share of the shared ones (`Block.shared_param_count`), in their own layout:

- the owner holds it through `param_count`;
- the readers of each other layer group share one copy: blocks of one group take one
  decision, so the group holds one layout — one more copy at most, however many layers
  reuse the weight — and every block of a group is priced alike (the integer program
  prices a group as one block times its size);
- readers in the owner's group would hold the owner's layout (none exist: a group's blocks
  own the same parameter shapes).

Where the readers end up in the owner's layout the integer program has counted one split
copy too many (safe); the plan's reported memory counts each distinct layout once
(`planner.api.shared_copy_correction`). With `--per-layer` a group's blocks may take
different layouts, and the copies past one per group are counted only in the plan's
reported memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import ClassVar

from ir.graph import Block, Graph


def shared_param_readers(graph: Graph) -> dict[str, list[tuple[Block, float]]]:
    """Parameter -> every block reading it (the owner first, then program order), each with
    the share of a copy the integer program charges it (1 for the owner, which owns it; the
    module docstring for the others). Only parameters that count (not buffers, not a tied
    handle's second name) and that several blocks read."""
    ops = {op.name: op for op in graph.ops}
    readers: dict[str, list[Block]] = {}
    for block in graph.blocks:
        read = dict.fromkeys(v for name in block.ops for v in ops[name].inputs if v in graph.params)
        for v in read:
            if graph.params[v].counts:
                readers.setdefault(v, []).append(block)
    out: dict[str, list[tuple[Block, float]]] = {}
    for v, blocks in readers.items():
        if len(blocks) < 2:
            continue
        owner = next((b for b in blocks if v in b.params), blocks[0])
        others = [b for b in blocks if b is not owner]
        per_group = Counter(b.group for b in others)
        out[v] = [(owner, 1.0)] + [
            (b, 0.0 if b.group == owner.group else 1.0 / per_group[b.group]) for b in others
        ]
    return out


@dataclass(frozen=True)
class CountSharedParams:
    """Post: every block has `shared_param_count`, its share of the weights it reads but
    does not own (module docstring), in elements. Runs after grouping."""

    name: ClassVar[str] = "count-shared-params"

    def run(self, graph: Graph) -> Graph:
        charged: dict[str, float] = {}
        for v, readers in shared_param_readers(graph).items():
            for block, share in readers[1:]:
                charged[block.name] = charged.get(block.name, 0.0) + share * graph.params[v].numel
        blocks = [replace(b, shared_param_count=charged.get(b.name, 0.0)) for b in graph.blocks]
        return replace(graph, blocks=blocks)
