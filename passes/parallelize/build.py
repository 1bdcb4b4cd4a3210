"""Build the integer program of one mesh: options per block, resharding edges, limits."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from ir.errors import InputError
from ir.graph import Block, Graph
from passes.parallelize.context import PlanContext
from passes.parallelize.ilp import BlockVars, Edge, Option, Problem
from passes.parallelize.layouts import reshard_seconds
from passes.parallelize.pricing import Priced, price
from passes.parallelize.strategies import BY_NAME, DEFAULT_STRATEGIES, STRATEGIES
from passes.parallelize.strategy import Strategy
from passes.parallelize.verified import unverified_reason

EXTRA_PARAMETERS: dict[str, tuple[str, ...]] = {"helix": ("hopb",)}


@dataclass(frozen=True)
class ForceRule:
    """`--force 'layers.*.attention=tp(tp=4)'`: blocks matching `pattern` use `strategy`;
    `degrees` (axis sizes) filter the mesh search; `extras` are strategy parameters."""

    pattern: str
    strategy: str
    degrees: dict[str, int] = field(default_factory=dict)
    extras: dict[str, int] = field(default_factory=dict)
    text: str = ""

    @staticmethod
    def parse(text: str) -> ForceRule:
        m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*([a-z_]+)\s*(?:\((.*)\))?\s*", text)
        if not m:
            raise InputError(
                f"--force {text!r} is not BLOCK_GLOB=STRATEGY[(axis=n,...)]; e.g. "
                "--force 'layers.*.attention=tp(tp=4)'"
            )
        pattern, strategy, inner = m.group(1), m.group(2), m.group(3)
        if strategy not in BY_NAME:
            raise InputError(
                f"--force {text!r} names strategy {strategy!r}; known strategies: "
                f"{', '.join(BY_NAME)}"
            )
        degrees: dict[str, int] = {}
        extras: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in (inner or "").split(","))):
            key, sep, value = part.partition("=")
            if not sep or not value.strip().isdigit():
                raise InputError(f"--force {text!r}: {part!r} is not NAME=INTEGER")
            key = key.strip()
            if key == "tpa":  # Helix names its attention TP `tpa`; it is the mesh's tp axis
                key = "tp"
            if key in ("dp", "cp", "kvp", "tp", "ep"):
                degrees[key] = int(value)
            elif key in EXTRA_PARAMETERS.get(strategy, ()):
                extras[key] = int(value)
            else:
                known = ", ".join(EXTRA_PARAMETERS.get(strategy, ())) or "none"
                raise InputError(
                    f"--force {text!r}: {key!r} is not a mesh axis (dp, cp, kvp, tp, ep) or a "
                    f"parameter of {strategy} (its parameters: {known})"
                )
        return ForceRule(pattern, strategy, degrees, extras, text.strip())

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass
class MeshProblem:
    """One mesh's program plus, per (block, option name), its price and what the option is
    (strategy name and extra parameters)."""

    ctx: PlanContext
    problem: Problem
    priced: dict[tuple[str, str], Priced]
    excluded: list[dict]
    meaning: dict[str, tuple[str, dict[str, int]]] = field(default_factory=dict)


def hidden_edges(graph: Graph) -> dict[tuple[str, str], int]:
    """(src block, dst block) -> hidden size, for every hidden-state value [B, T, H] that one
    block produces and another reads (the residual stream and skips included)."""
    owner = {o: b for b in graph.blocks for o in b.ops}
    producer_block = {v: owner[o.name] for o in graph.ops for v in o.outputs}
    edges: dict[tuple[str, str], int] = {}
    for op in graph.ops:
        dst = owner[op.name]
        for v in op.inputs:
            src = producer_block.get(v)
            if src is None or src.name == dst.name:
                continue
            shape = graph.values[v].shape
            hidden = src.dims.get("hidden") or dst.dims.get("hidden")
            if len(shape) == 3 and hidden and shape[-1] == hidden:
                edges[(src.name, dst.name)] = int(hidden)
    return edges


def candidate_strategies(block: Block, allowed: frozenset[str]) -> list[Strategy]:
    return [s for s in STRATEGIES if block.kind in s.kinds and s.name in allowed]


def build_problem(
    graph: Graph,
    ctx: PlanContext,
    *,
    capacity_bytes: float,
    fixed_bytes: float,
    force: list[ForceRule],
    time_budget_s: float | None,
    share_groups: bool,
    edges: dict[tuple[str, str], int],
    allowed: frozenset[str],
    verified_only: bool = False,
    compact: bool = False,
    price_cache: dict | None = None,
) -> MeshProblem:
    """Options per block (strategies in `allowed`, valid on this mesh; with `verified_only`,
    default strategies only where their program is verified — a strategy the user named in
    --strategies or --force is theirs to try), resharding edges and limits. `compact`
    builds the equivalent program with one block per shared group (see `_compact`)."""
    priced: dict[tuple[str, str], Priced] = {}
    meaning: dict[str, tuple[str, dict[str, int]]] = {}
    excluded: list[dict] = []
    blocks: list[BlockVars] = []
    group_options: dict[str, tuple[Option, ...]] = {}
    # Identical blocks price identically; a caller's `price_cache` (one workload and cost
    # model, see `search`) carries the prices over to another search on the same mesh.
    group_prices: dict[tuple[str, str], Priced] = (
        {} if price_cache is None else price_cache.setdefault(ctx.mesh, {})
    )
    group_reasons: dict[tuple[str, str], str | None] = {}
    for block in graph.blocks:
        if share_groups and not force and block.group in group_options:
            # A later member of a shared group: same options, same prices as the first.
            opts = group_options[block.group]
            for option in opts:
                priced[(block.name, option.name)] = group_prices[(block.group, option.name)]
            blocks.append(BlockVars(name=block.name, group=block.group, options=opts))
            continue
        rules = [r for r in force if r.matches(block.name)]
        wanted = {rules[-1].strategy} if rules else None
        options: list[Option] = []
        pool = allowed | wanted if wanted else allowed
        for s in candidate_strategies(block, pool):
            if wanted is not None and s.name not in wanted:
                continue
            key = (block.group, s.name)
            if key not in group_reasons:
                group_reasons[key] = s.why_not(block, ctx) or (
                    unverified_reason(s.name, block)
                    if verified_only and s.name in DEFAULT_STRATEGIES
                    and not (wanted and s.name in wanted)
                    else None
                )
            reason = group_reasons[key]
            if reason:
                excluded.append({"group": block.group, "strategy": s.name, "reason": reason})
                continue
            for extras in s.options(block, ctx):
                if rules and any(extras.get(k) != v for k, v in rules[-1].extras.items()):
                    continue
                name = s.option_name(extras)
                p = group_prices.get((block.group, name))
                if p is None:
                    p = group_prices[(block.group, name)] = price(block, s, ctx, **extras)
                priced[(block.name, name)] = p
                meaning[name] = (s.name, extras)
                options.append(Option(
                    name=name,
                    time_s=p.time_s,
                    memory_bytes=p.memory_bytes,
                    layout_in=s.layout_in,
                    layout_out=s.layout_out,
                ))
        if not options:
            why = "; ".join(
                e["reason"] for e in excluded if e["group"] == block.group
            ) or "no strategy applies"
            forced = f" (forced to {rules[-1].text})" if rules else ""
            raise _NoOption(f"block {block.name}{forced} has no valid strategy on mesh "
                            f"{ctx.mesh}: {why}")
        if share_groups and block.group in group_options:
            opts = group_options[block.group]
        else:
            opts = tuple(options)
            group_options[block.group] = opts
        blocks.append(BlockVars(name=block.name, group=block.group, options=opts))
    by_name = {b.name: b for b in blocks}
    replica_rows = ctx.replica_batch() * ctx.workload.seq
    edge_costs: list[tuple[str, str, dict]] = []
    costs: dict[tuple, dict] = {}  # edges between the same option lists and sizes cost the same
    signatures: dict[int, tuple] = {}  # by option tuple (shared groups share one)

    def signature(options: tuple[Option, ...]) -> tuple:
        if id(options) not in signatures:
            signatures[id(options)] = tuple((o.name, o.layout_in, o.layout_out) for o in options)
        return signatures[id(options)]

    for (src, dst), hidden in sorted(edges.items()):
        full = replica_rows * hidden * ctx.act_bytes
        key = (signature(by_name[src].options), signature(by_name[dst].options), full)
        if key not in costs:
            costs[key] = Edge.from_layouts(
                by_name[src], by_name[dst], lambda a, b, full=full: reshard_seconds(a, b, full, ctx)
            ).cost_s
        edge_costs.append((src, dst, costs[key]))
    if compact:
        if force or not share_groups:
            raise ValueError("a compact problem needs shared groups and no --force rules")
        blocks, ilp_edges = _compact(blocks, edge_costs)
        priced = {(b.name, name): group_prices[(b.name, name)] for b in blocks for name in
                  (o.name for o in b.options)}
    else:
        ilp_edges = [Edge(src=src, dst=dst, cost_s=cost) for src, dst, cost in edge_costs]
    problem = Problem(
        blocks=tuple(blocks),
        edges=tuple(ilp_edges),
        memory_capacity_bytes=capacity_bytes,
        fixed_memory_bytes=fixed_bytes,
        time_budget_s=time_budget_s,
        share_groups=share_groups,
    )
    dedup = {(e["group"], e["strategy"]): e for e in excluded}
    return MeshProblem(ctx, problem, priced, list(dedup.values()), meaning)


def _compact(
    blocks: list[BlockVars], edge_costs: list[tuple[str, str, dict]]
) -> tuple[list[BlockVars], list[Edge]]:
    """The same program with one block per shared group: a group of n blocks is one block
    whose option times and memory are n times a member's, edges between two groups are
    summed into one, and an edge inside a group (which costs only when both ends differ,
    impossible when they share an option) adds its same-option cost to the option. This is
    the decision-unit reduction of `ilp` done once per group instead of per block, so a
    126-layer model costs what a few layers cost to build and check (sweeps)."""
    group_of = {b.name: b.group for b in blocks}
    first: dict[str, BlockVars] = {}
    count: dict[str, int] = {}
    for b in blocks:
        first.setdefault(b.group, b)
        count[b.group] = count.get(b.group, 0) + 1
    inside: dict[str, dict[str, float]] = {}
    between: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    for src, dst, cost in edge_costs:
        gs, gd = group_of[src], group_of[dst]
        if gs == gd:
            own = inside.setdefault(gs, {})
            for (s, t), seconds in cost.items():
                if s == t:
                    own[s] = own.get(s, 0.0) + seconds
            continue
        acc = between.setdefault((gs, gd), {})
        for pair, seconds in cost.items():
            acc[pair] = acc.get(pair, 0.0) + seconds
    compact = [
        BlockVars(name=g, group=g, options=tuple(
            Option(
                name=o.name,
                time_s=o.time_s * count[g] + inside.get(g, {}).get(o.name, 0.0),
                memory_bytes=o.memory_bytes * count[g],
                layout_in=o.layout_in,
                layout_out=o.layout_out,
            )
            for o in b.options
        ))
        for g, b in first.items()
    ]
    return compact, [Edge(src=gs, dst=gd, cost_s=c) for (gs, gd), c in between.items()]


class _NoOption(Exception):
    """A block has no valid option on this mesh (the mesh is skipped, with this reason)."""
