"""Build the integer program of one mesh: options per block, resharding edges, limits."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field

from ir.errors import InputError
from ir.graph import Block, Graph
from passes.parallelize.context import PlanContext
from passes.parallelize.ilp import BlockVars, Edge, Option, Problem
from passes.parallelize.layouts import reshard_seconds
from passes.parallelize.prefetch import PrefetchCosts
from passes.parallelize.pricing import Priced, price
from passes.parallelize.strategies import BY_NAME, DEFAULT_STRATEGIES, STRATEGIES
from passes.parallelize.strategy import Strategy
from passes.parallelize.verified import unverified_reason

EXTRA_PARAMETERS: dict[str, tuple[str, ...]] = {"helix": ("hopb", "append_block")}
# Training decisions every strategy takes (passes.parallelize.training).
TRAINING_PARAMETERS: tuple[str, ...] = ("zero", "recompute")


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
            elif key in EXTRA_PARAMETERS.get(strategy, ()) + TRAINING_PARAMETERS:
                extras[key] = int(value)
            else:
                known = ", ".join(EXTRA_PARAMETERS.get(strategy, ()) + TRAINING_PARAMETERS)
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
    group_sizes: dict[str, int] = field(default_factory=dict)  # compact: blocks per group
    # training at level 3: the part of the edges' and the first block's time that is
    # prefetched all-gathers exposed (`PrefetchCosts`), kept apart from resharding
    prefetch: PrefetchCosts | None = None

    def prefetch_exposed_s(self, assignment: dict[str, str]) -> float:
        """Seconds of level-3 all-gathers left exposed by prefetch under `assignment`."""
        return 0.0 if self.prefetch is None else self.prefetch.seconds(assignment)


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
    skeleton: GroupSkeleton | None = None,
    price_cache: dict | None = None,
) -> MeshProblem:
    """Options per block (strategies in `allowed`, valid on this mesh; with `verified_only`,
    default strategies only where their program is verified — a strategy the user named in
    --strategies or --force is theirs to try), resharding edges and limits.

    `compact` builds the same program with one block per shared group (named by the group;
    see `GroupSkeleton`): same optimum, a fraction of the work for deep models (sweeps).
    A caller's `price_cache` (one workload and cost model, see `search`) carries prices over
    to another search on the same mesh."""
    options_of = _OptionFinder(ctx, allowed, verified_only, price_cache)
    if compact:
        if force or not share_groups:
            raise ValueError("a compact problem needs shared groups and no --force rules")
        return _build_compact(
            graph, ctx, options_of, skeleton or group_skeleton(graph, edges),
            capacity_bytes=capacity_bytes, fixed_bytes=fixed_bytes, time_budget_s=time_budget_s,
        )
    priced: dict[tuple[str, str], Priced] = {}
    blocks: list[BlockVars] = []
    group_options: dict[str, tuple[Option, ...]] = {}
    for block in graph.blocks:
        if share_groups and not force and block.group in group_options:
            # A later member of a shared group: same options, same prices as the first.
            opts = group_options[block.group]
            for option in opts:
                priced[(block.name, option.name)] = options_of.prices[(block.group, option.name)]
            blocks.append(BlockVars(name=block.name, group=block.group, options=opts))
            continue
        rules = [r for r in force if r.matches(block.name)]
        options = options_of(block, rules[-1] if rules else None)
        for option in options:
            priced[(block.name, option.name)] = options_of.prices[(block.group, option.name)]
        if share_groups and block.group in group_options:
            opts = group_options[block.group]
        else:
            opts = tuple(options)
            group_options[block.group] = opts
        blocks.append(BlockVars(name=block.name, group=block.group, options=opts))
    by_name = {b.name: b for b in blocks}
    replica_rows = ctx.replica_batch() * ctx.replica_tokens()
    ilp_edges: list[Edge] = []
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
        ilp_edges.append(Edge(src=src, dst=dst, cost_s=costs[key]))
    prefetch = None
    if any(p.prefetch_s != (0.0, 0.0) for p in priced.values()):
        names = [b.name for b in graph.blocks]
        lead = graph.blocks[0]
        prefetch = PrefetchCosts.between(
            [(a, b, 1) for a, b in zip(names, names[1:], strict=False)],
            {b.name: b.options for b in blocks},
            {b.name: {o.name: priced[(b.name, o.name)] for o in b.options} for b in blocks},
            tuple(b.name for b in graph.blocks if b is lead or (share_groups and b.group == lead.group)),
        )
        blocks, ilp_edges = prefetch.apply(blocks, ilp_edges)
    problem = Problem(
        blocks=tuple(blocks),
        edges=tuple(ilp_edges),
        memory_capacity_bytes=capacity_bytes,
        fixed_memory_bytes=fixed_bytes,
        time_budget_s=time_budget_s,
        share_groups=share_groups,
    )
    return MeshProblem(ctx, problem, priced, options_of.excluded_list(), options_of.meaning,
                       prefetch=prefetch)


class _OptionFinder:
    """The priced options of a block on one mesh; prices and exclusion reasons are kept per
    group (identical blocks price identically)."""

    def __init__(
        self, ctx: PlanContext, allowed: frozenset[str], verified_only: bool,
        price_cache: dict | None,
    ) -> None:
        self.ctx = ctx
        self.allowed = allowed
        self.verified_only = verified_only
        self.prices: dict[tuple[str, str], Priced] = (
            {} if price_cache is None else price_cache.setdefault(ctx.mesh, {})
        )
        self.reasons: dict[tuple[str, str], str | None] = {}
        self.excluded: list[dict] = []
        self.meaning: dict[str, tuple[str, dict[str, int]]] = {}

    def __call__(self, block: Block, rule: ForceRule | None) -> list[Option]:
        ctx = self.ctx
        wanted = {rule.strategy} if rule else None
        pool = self.allowed | wanted if wanted else self.allowed
        options: list[Option] = []
        for s in candidate_strategies(block, pool):
            if wanted is not None and s.name not in wanted:
                continue
            key = (block.group, s.name)
            if key not in self.reasons:
                self.reasons[key] = s.why_not(block, ctx) or (
                    unverified_reason(s.name, block, ctx.workload.kind)
                    if self.verified_only and s.name in DEFAULT_STRATEGIES
                    and not (wanted and s.name in wanted)
                    else None
                )
            reason = self.reasons[key]
            if reason:
                self.excluded.append({"group": block.group, "strategy": s.name, "reason": reason})
                continue
            for extras in s.options(block, ctx):
                if rule:
                    if any(k in extras and extras[k] != v for k, v in rule.extras.items()):
                        continue
                    # a forced parameter the options leave at its default (append_block)
                    extras = {**extras, **{k: v for k, v in rule.extras.items() if k not in extras}}
                name = s.option_name(extras)
                p = self.prices.get((block.group, name))
                if p is None:
                    p = self.prices[(block.group, name)] = price(block, s, ctx, **extras)
                self.meaning[name] = (s.name, extras)
                options.append(Option(
                    name=name,
                    time_s=p.time_s,
                    memory_bytes=p.memory_bytes,
                    layout_in=s.layout_in,
                    layout_out=s.layout_out,
                ))
        if not options:
            why = "; ".join(
                e["reason"] for e in self.excluded if e["group"] == block.group
            ) or "no strategy applies"
            forced = f" (forced to {rule.text})" if rule else ""
            raise _NoOption(f"block {block.name}{forced} has no valid strategy on mesh "
                            f"{ctx.mesh}: {why}")
        return options

    def excluded_list(self) -> list[dict]:
        return list({(e["group"], e["strategy"]): e for e in self.excluded}.values())


@dataclass(frozen=True)
class GroupSkeleton:
    """A graph seen group by group, for the compact program: per shared group its first
    block and size; the hidden-state edges counted per (source group, target group, hidden
    size). With every block of a group on one option, a group of n blocks is one block with
    n times a member's time and memory, the n-fold edges between two groups are one edge
    with n times the resharding cost, and an edge between two blocks of one group costs the
    option's own resharding (its layout_out to its layout_in): the decision-unit reduction
    of `ilp`, done once per graph instead of once per block and mesh."""

    first: tuple[Block, ...]
    count: dict[str, int]
    between: tuple[tuple[str, str, int, int], ...]  # (src group, dst group, hidden, edges)
    inside: tuple[tuple[str, int, int], ...]  # (group, hidden, edges between its own blocks)
    follows: tuple[tuple[str, str, int], ...] = ()  # (group, next block's group, times)


def group_skeleton(graph: Graph, edges: dict[tuple[str, str], int]) -> GroupSkeleton:
    first: dict[str, Block] = {}
    count: dict[str, int] = {}
    group_of: dict[str, str] = {}
    for b in graph.blocks:
        first.setdefault(b.group, b)
        count[b.group] = count.get(b.group, 0) + 1
        group_of[b.name] = b.group
    between: dict[tuple[str, str, int], int] = {}
    inside: dict[tuple[str, int], int] = {}
    for (src, dst), hidden in sorted(edges.items()):
        gs, gd = group_of[src], group_of[dst]
        if gs != gd:
            between[(gs, gd, hidden)] = between.get((gs, gd, hidden), 0) + 1
        else:
            inside[(gs, hidden)] = inside.get((gs, hidden), 0) + 1
    follows: dict[tuple[str, str], int] = {}
    for a, b in zip(graph.blocks, graph.blocks[1:], strict=False):
        follows[(a.group, b.group)] = follows.get((a.group, b.group), 0) + 1
    return GroupSkeleton(
        first=tuple(first.values()), count=count,
        between=tuple((gs, gd, hidden, n) for (gs, gd, hidden), n in between.items()),
        inside=tuple((g, hidden, n) for (g, hidden), n in inside.items()),
        follows=tuple((ga, gb, n) for (ga, gb), n in follows.items()),
    )


def _build_compact(
    graph: Graph,
    ctx: PlanContext,
    options_of: _OptionFinder,
    skeleton: GroupSkeleton,
    *,
    capacity_bytes: float,
    fixed_bytes: float,
    time_budget_s: float | None,
) -> MeshProblem:
    blocks: dict[str, BlockVars] = {}
    priced: dict[tuple[str, str], Priced] = {}
    for block in skeleton.first:
        n = skeleton.count[block.group]
        options = options_of(block, None)
        for option in options:
            priced[(block.group, option.name)] = options_of.prices[(block.group, option.name)]
        blocks[block.group] = BlockVars(name=block.group, group=block.group, options=tuple(
            Option(name=o.name, time_s=o.time_s * n, memory_bytes=o.memory_bytes * n,
                   layout_in=o.layout_in, layout_out=o.layout_out)
            for o in options
        ))
    replica_rows = ctx.replica_batch() * ctx.replica_tokens()
    for group, hidden, n in skeleton.inside:
        full = replica_rows * hidden * ctx.act_bytes
        b = blocks[group]
        blocks[group] = BlockVars(name=group, group=group, options=tuple(
            dataclasses.replace(
                o, time_s=o.time_s + n * reshard_seconds(o.layout_out, o.layout_in, full, ctx)
            )
            for o in b.options
        ))
    edges = []
    for gs, gd, hidden, n in skeleton.between:
        full = replica_rows * hidden * ctx.act_bytes
        edge = Edge.from_layouts(
            blocks[gs], blocks[gd],
            lambda a, b, full=full, n=n: n * reshard_seconds(a, b, full, ctx),
        )
        edges.append(edge)
    merged: dict[tuple[str, str], dict] = {}
    for e in edges:  # one edge per group pair (several hidden sizes may connect two groups)
        acc = merged.setdefault((e.src, e.dst), {})
        for pair, seconds in e.cost_s.items():
            acc[pair] = acc.get(pair, 0.0) + seconds
    units = list(blocks.values())
    unit_edges = [Edge(src=s, dst=d, cost_s=c) for (s, d), c in merged.items()]
    prefetch = None
    if any(p.prefetch_s != (0.0, 0.0) for p in priced.values()):
        prefetch = PrefetchCosts.between(
            list(skeleton.follows),
            {g: b.options for g, b in blocks.items()},
            {g: {o.name: priced[(g, o.name)] for o in b.options} for g, b in blocks.items()},
            (skeleton.first[0].group,),
        )
        units, unit_edges = prefetch.apply(units, unit_edges)
    problem = Problem(
        blocks=tuple(units),
        edges=tuple(unit_edges),
        memory_capacity_bytes=capacity_bytes,
        fixed_memory_bytes=fixed_bytes,
        time_budget_s=time_budget_s,
        share_groups=True,
    )
    return MeshProblem(ctx, problem, priced, options_of.excluded_list(), options_of.meaning,
                       dict(skeleton.count), prefetch)


class _NoOption(Exception):
    """A block has no valid option on this mesh (the mesh is skipped, with this reason)."""
