"""Level-3 prefetch in the integer program: the generated training program all-gathers the
next block's level-3 weights while a block computes (`passes.parallelize.training`), so a
gather's exposed time depends on the options of two consecutive blocks — an edge cost — and
the first block's forward gathers, which nothing precedes, are exposed in its own time."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from passes.parallelize.ilp import BlockVars, Edge, Option
from passes.parallelize.pricing import Priced
from passes.parallelize.training import BlockPass, prefetch_exposed_s


@dataclass(frozen=True)
class PrefetchCosts:
    """Level-3 prefetch as the program runs it (`training.prefetch_exposed_s`): per pair of
    consecutive blocks (earlier, later) the exposed gather seconds per (earlier option,
    later option); the first block's forward gathers, per option, are not prefetched (carried
    by every block that shares its option list: `first` names them, an upper bound)."""

    pairs: dict[tuple[str, str], dict[tuple[str, str], float]]
    first: tuple[tuple[str, ...], dict[str, float]]

    @classmethod
    def between(
        cls, order: list[tuple[str, str, int]], options: dict[str, tuple[Option, ...]],
        price_of: dict[str, dict[str, Priced]], first: tuple[str, ...],
    ) -> PrefetchCosts:
        """`order`: consecutive (earlier, later, times) units; `options` and `price_of` per
        unit name (a block, or a compact group); `first`: the first unit and those sharing
        its option list. Pairs with nothing exposed are left out."""
        pairs: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
        once: dict[tuple[int, int], dict[tuple[str, str], float]] = {}  # one option list, one group
        for src, dst, times in order:
            key = (id(options[src]), id(options[dst]))
            if key not in once:
                once[key] = {}
                for a in options[src]:
                    pa = price_of[src][a.name]
                    for b in options[dst]:
                        pb = price_of[dst][b.name]
                        seconds = prefetch_exposed_s(_side(pa), _side(pb))
                        if seconds:
                            once[key][(a.name, b.name)] = seconds
            cost = {pair: times * seconds for pair, seconds in once[key].items()}
            if cost:
                acc = pairs.setdefault((src, dst), {})
                for pair, seconds in cost.items():
                    acc[pair] = acc.get(pair, 0.0) + seconds
        first_cost = {o.name: price_of[first[0]][o.name].prefetch_s[0] for o in options[first[0]]} if first else {}
        return cls(pairs, (first, {k: v for k, v in first_cost.items() if v}))

    def seconds(self, assignment: dict[str, str]) -> float:
        first, cost = self.first
        total = sum(cost.get(assignment[name], 0.0) for name in first)
        for (src, dst), by_pair in self.pairs.items():  # a unit against itself too (src == dst)
            total += by_pair.get((assignment[src], assignment[dst]), 0.0)
        return total

    def apply(self, blocks: list[BlockVars], edges: list[Edge]) -> tuple[list[BlockVars], list[Edge]]:
        """The blocks with the first one's unprefetched gathers (and a unit's prefetch
        against itself, compact groups) in their option times; the edges with the prefetch
        costs added."""
        first, first_cost = self.first
        inside = {src: by_pair for (src, dst), by_pair in self.pairs.items() if src == dst}
        shared: dict[int, tuple[Option, ...]] = {}  # one new tuple per shared option tuple
        out_blocks = []
        for b in blocks:
            extra = {o.name: first_cost.get(o.name, 0.0) if b.name in first else 0.0 for o in b.options}
            for (x, y), seconds in inside.get(b.name, {}).items():
                if x == y:
                    extra[x] += seconds
            if not any(extra.values()):
                out_blocks.append(b)
                continue
            if id(b.options) not in shared:
                shared[id(b.options)] = tuple(
                    dataclasses.replace(o, time_s=o.time_s + extra[o.name]) for o in b.options
                )
            out_blocks.append(dataclasses.replace(b, options=shared[id(b.options)]))
        merged = {(e.src, e.dst): dict(e.cost_s) for e in edges}
        for (src, dst), by_pair in self.pairs.items():
            if src == dst:
                continue
            acc = merged.setdefault((src, dst), {})
            for pair, seconds in by_pair.items():
                acc[pair] = acc.get(pair, 0.0) + seconds
        return out_blocks, [Edge(src=s, dst=d, cost_s=c) for (s, d), c in merged.items()]


def _side(p: Priced) -> BlockPass:
    return BlockPass(p.spare_forward_s, p.spare_backward_s, p.prefetch_s)
