"""Mesh search: solve the integer program on every factorization of the GPU count.

The outer loop enumerates meshes dp × tp (outermost first; tp innermost so it lands inside a
scale-up domain first), with a kvp axis for decode when Helix is allowed and a cp axis for
prefill when ring attention is (cp outside tp, so CP runs across nodes and TP inside one); each mesh gets its own program (`build.build_problem`) solved by
`ilp.solve`; the fastest feasible plan wins, ties broken by mesh order. Meshes that cannot
run the workload (batch not divisible, a forced degree not matched, no valid strategy for a
block, memory) are reported with their reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cost_models import CostModel, HardwareSpec
from ir.errors import InfeasiblePlanError, InputError
from ir.graph import Graph
from ir.mesh import Mesh
from ir.workload import Workload, dtype_size_bytes
from passes.parallelize.build import (
    TRAINING_PARAMETERS,
    ForceRule,
    GroupSkeleton,
    MeshProblem,
    _NoOption,
    build_problem,
    group_skeleton,
    hidden_edges,
)
from passes.parallelize.context import PlanContext
from passes.parallelize.ilp import Problem, Solution, solve
from passes.parallelize.strategies import BY_NAME, DEFAULT_STRATEGIES
from passes.parallelize.training import GRAD_BUCKET_BYTES, GRAD_BUCKETS_HELD
from passes.parallelize.verified import batch_split_reason, token_split_reason


@dataclass
class MeshOutcome:
    mesh: Mesh
    built: MeshProblem | None
    solution: Solution | None
    reason: str = ""
    min_memory_bytes: float | None = None


@dataclass
class PriceCache:
    """Block prices per mesh, shared by searches of one graph under one workload and cost
    model that differ only in the strategies offered (a sweep point with and without
    Helix): the second search prices only the meshes the first did not."""

    graph: Graph
    workload: Workload
    hardware: HardwareSpec
    cuda_graphs: bool = False
    by_mesh: dict = field(default_factory=dict)

    def check(self, graph: Graph, workload: Workload, hardware: HardwareSpec, cuda_graphs: bool) -> None:
        if not (self.graph is graph and self.workload == workload and self.hardware is hardware
                and self.cuda_graphs == cuda_graphs):
            raise ValueError("a PriceCache serves one graph, workload, hardware and cuda_graphs")


@dataclass
class SearchResult:
    best: MeshOutcome
    outcomes: list[MeshOutcome]
    capacity_bytes: float
    fixed_bytes: float


def mesh_candidates(gpus: int, *, kvp: bool = False, cp: bool = False) -> list[Mesh]:
    """Factorizations dp × tp of the GPU count (dp × kvp × tp when Helix is allowed,
    dp × cp × tp when context parallelism is)."""
    out = []
    for tp in range(1, gpus + 1):
        if gpus % tp:
            continue
        rest = gpus // tp
        for k in range(1, rest + 1) if kvp else (1,):
            if rest % k:
                continue
            for c in range(1, rest // k + 1) if cp else (1,):
                if (rest // k) % c == 0:
                    out.append(Mesh.of(dp=rest // k // c, cp=c, kvp=k, tp=tp))
    return out


RUNTIME_RESERVE_BYTES = 2**30


def workspace_bytes(
    graph: Graph, workload: Workload, mesh: Mesh, act_bytes: float, reserve_bytes: float
) -> float:
    """Transient activations of the widest block on one replica (not summed over blocks),
    plus a runtime reserve (CUDA context, allocator slack; 1 GiB by default). Training on a
    dp axis adds what the generated program holds beside the sharded state (training's
    module docstring): two gathered blocks' parameters (the one running and the one
    prefetched, when a block shards its parameters over dp, level 3) and the gradient
    buckets of whole gradients at levels 2-3 (GRAD_BUCKETS_HELD of GRAD_BUCKET_BYTES, at
    most all of the gradients), split over the model axes."""
    cp = mesh.size("cp")
    tokens = workload.seq if cp == 1 else -(-workload.seq // (2 * cp)) * 2
    rows = workload.batch // mesh.size("dp") * tokens
    held = 0.0
    if workload.kind == "train" and mesh.size("dp") > 1:
        model_split = mesh.size("kvp") * mesh.size("tp")
        weight_bytes = dtype_size_bytes(workload.weight_dtype)
        if 3 in workload.zero_levels:
            held += 2 * max(b.param_count for b in graph.blocks) / model_split * weight_bytes
        if max(workload.zero_levels) >= 2:
            grads = sum(b.param_count for b in graph.blocks) / model_split * weight_bytes
            held += min(GRAD_BUCKETS_HELD * GRAD_BUCKET_BYTES, grads)
    return rows * _graph_facts(graph).widest * act_bytes * 2 + held + reserve_bytes


def search(
    graph: Graph,
    workload: Workload,
    hardware: HardwareSpec,
    gpus: int,
    *,
    force: list[ForceRule] | None = None,
    share_groups: bool = True,
    time_limit_s: float = 60.0,
    cuda_graphs: bool = False,
    reserve_bytes: float = RUNTIME_RESERVE_BYTES,
    strategies: frozenset[str] = DEFAULT_STRATEGIES,
    top_k: int = 3,
    verified_only: bool = False,
    prune: bool = False,
    compact: bool = False,
    full_best: bool = False,
    price_cache: PriceCache | None = None,
    incumbent_s: float = math.inf,
) -> SearchResult:
    """The fastest plan over every mesh of `gpus` GPUs (see the module docstring).

    With `prune` (for sweeps, which need only the best plan) meshes are solved in the order
    of a lower bound on their plan time, and a mesh whose bound exceeds the best plan found
    so far is not solved: its outcome has no solution and says so. The best plan is the same
    (bounds are exact lower bounds; a margin keeps ties solved), but the other meshes' best
    plans, which the report lists as alternatives, are missing. `compact` solves the program
    with one block per shared group (same optimum; `build._compact`): its outcomes name groups
    where the full program names blocks; with `full_best` the winning mesh is then built and
    solved block by block (with its `top_k` runner-ups), as a plan needs. `incumbent_s`, the time of a plan known to be
    feasible here (with `prune`), prunes from the start."""
    force = list(force or [])
    unknown = sorted(set(strategies) - set(BY_NAME))
    if unknown:
        raise InputError(f"unknown strategies {unknown}; known: {', '.join(BY_NAME)}")
    allowed = frozenset(strategies) | {r.strategy for r in force}
    for rule in force:
        if not any(rule.matches(b.name) for b in graph.blocks):
            raise InputError(
                f"--force {rule.text!r} matches no block; block names look like "
                + ", ".join(b.name for b in graph.blocks[:6])
                + " ..."
            )
        off_workload = BY_NAME[rule.strategy].workload_reason(workload.kind, hint=True)
        if off_workload:
            # raised here: the mesh search would only say that no mesh has the forced axis
            raise InfeasiblePlanError(f"--force {rule.text!r}: {off_workload}")
        training_only = sorted(set(rule.extras) & set(TRAINING_PARAMETERS))
        if training_only and workload.kind != "train":
            raise InputError(
                f"--force {rule.text!r} sets {', '.join(training_only)}, a training parameter, but "
                f"the workload is {workload.kind}; drop it or plan with --workload train"
            )
    cost = CostModel(hardware=hardware, cuda_graphs=cuda_graphs)
    capacity = float(hardware.hbm_capacity_bytes)
    if price_cache is not None:
        price_cache.check(graph, workload, hardware, cuda_graphs)
    facts = _graph_facts(graph)
    edges = facts.edges
    slo = workload.ttl_slo_s if workload.kind == "decode" else workload.ttft_slo_s
    outcomes: list[MeshOutcome] = []
    # kvp meshes: Helix, or the baseline whose FFN stays on the attention's tp group
    helix = bool({"helix", "tp_attn_group"} & allowed) and workload.kind == "decode"
    ring = bool({"cp_pass_kv", "cp_pass_q"} & allowed) and workload.kind in ("prefill", "train")
    split_reason = batch_split_reason(graph.blocks) if verified_only else None
    token_reason = token_split_reason(graph.blocks) if verified_only else None

    def build(ctx: PlanContext, compact: bool) -> MeshProblem:
        fixed = workspace_bytes(graph, workload, ctx.mesh, ctx.act_bytes, reserve_bytes)
        return build_problem(
            graph, ctx, capacity_bytes=capacity, fixed_bytes=fixed, force=force,
            time_budget_s=slo, share_groups=share_groups, edges=edges, allowed=allowed,
            verified_only=verified_only, compact=compact, skeleton=facts.skeleton,
            price_cache=None if price_cache is None else price_cache.by_mesh,
        )

    for mesh in mesh_candidates(gpus, kvp=helix, cp=ring):
        reason = _mesh_reason(mesh, workload, force)
        if not reason and split_reason and mesh.size("dp") > 1:
            reason = split_reason
        if not reason and token_reason and mesh.size("cp") > 1:
            reason = token_reason
        if reason:
            outcomes.append(MeshOutcome(mesh, None, None, reason))
            continue
        ctx = PlanContext(workload=workload, cost=cost, mesh=mesh)
        try:
            built = build(ctx, compact)
        except _NoOption as exc:
            outcomes.append(MeshOutcome(mesh, None, None, str(exc)))
            continue
        min_mem = built.problem.fixed_memory_bytes + sum(
            min(o.memory_bytes for o in b.options) for b in built.problem.blocks
        )
        outcomes.append(MeshOutcome(mesh, built, None, "", min_mem))
    _solve_meshes(outcomes, time_limit_s=time_limit_s, prune=prune, incumbent_s=incumbent_s)
    feasible = [o for o in outcomes if o.solution is not None]
    if not feasible:
        message = _infeasible_message(outcomes, gpus, capacity, workload)
        if verified_only:
            message += (
                ". Only strategies verified end to end were considered; "
                "--allow-unverified plans with every applicable strategy"
            )
        raise InfeasiblePlanError(message)
    # Ties go to the simpler mesh: a kvp axis whose plan uses no Helix equals a plain tp mesh.
    best = min(
        feasible,
        key=lambda o: (
            float(f"{o.solution.objective_s:.9g}"), o.mesh.size("kvp"), o.mesh.size("cp"),
            outcomes.index(o),
        ),
    )
    if compact and full_best:
        # The plan names blocks: the winning mesh's program again, block by block.
        best.built = build(best.built.ctx, False)
        best.solution = solve(best.built.problem, time_limit_s=time_limit_s, top_k=top_k)
    elif top_k > 1:
        # Only the winning mesh's runner-ups reach the plan; the solver is deterministic, so
        # solving that mesh again with them returns the same best plan.
        best.solution = solve(best.built.problem, time_limit_s=time_limit_s, top_k=top_k)
    return SearchResult(best, outcomes, capacity, best.built.problem.fixed_memory_bytes)


@dataclass(frozen=True)
class _GraphFacts:
    """What every search of a graph derives from it alone."""

    graph: Graph
    edges: dict[tuple[str, str], int]
    skeleton: GroupSkeleton
    widest: int


_FACTS: dict[int, _GraphFacts] = {}


def _graph_facts(graph: Graph) -> _GraphFacts:
    """Computed once per graph object: a sweep searches one graph thousands of times."""
    hit = _FACTS.get(id(graph))
    if hit is not None and hit.graph is graph:
        return hit
    if len(_FACTS) >= 8:
        _FACTS.clear()
    edges = hidden_edges(graph)
    facts = _GraphFacts(graph, edges, group_skeleton(graph, edges), _widest(graph))
    _FACTS[id(graph)] = facts
    return facts


def _widest(graph: Graph) -> int:
    return max(
        [b.dims.get("ffn", 0) * max(1, b.dims.get("top_k", 1)) for b in graph.blocks]
        + [4 * b.dims.get("hidden", 0) for b in graph.blocks]
    )


def lower_bound_s(problem: Problem) -> float:
    """No plan of `problem` is faster: each block at its fastest option, resharding free
    (edge costs are >= 0)."""
    return sum(min(o.time_s for o in b.options) for b in problem.blocks)


PRUNE_MARGIN = 1e-6  # relative; well above the 1e-9 at which search treats plan times as tied


def _solve_meshes(
    outcomes: list[MeshOutcome], *, time_limit_s: float, prune: bool, incumbent_s: float
) -> None:
    """Solve every built mesh in place (solution or reason); see `search` for `prune`."""
    todo = [o for o in outcomes if o.built is not None and not o.reason]
    if prune:
        bounds = {id(o): lower_bound_s(o.built.problem) for o in todo}
        todo.sort(key=lambda o: bounds[id(o)])  # stable: mesh order among equal bounds
    best_s = incumbent_s if prune else math.inf
    for o in todo:
        if prune and bounds[id(o)] > best_s * (1 + PRUNE_MARGIN):
            o.reason = (
                f"not solved: no plan on this mesh beats {bounds[id(o)] * 1e3:.4g} ms, slower "
                f"than a plan already found ({best_s * 1e3:.4g} ms)"
            )
            continue
        try:
            o.solution = solve(o.built.problem, time_limit_s=time_limit_s, top_k=1)
        except InfeasiblePlanError as exc:
            o.reason = str(exc)
            continue
        best_s = min(best_s, o.solution.objective_s)


def _mesh_reason(mesh: Mesh, workload: Workload, force: list[ForceRule]) -> str:
    dp = mesh.size("dp")
    if workload.batch % dp:
        return f"batch {workload.batch} is not divisible by dp={dp}"
    for rule in force:
        for axis, size in rule.degrees.items():
            if mesh.size(axis) != size:
                return f"--force {rule.text} needs {axis}={size}, this mesh has {axis}={mesh.size(axis)}"
    return ""


def _gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"


def _training_memory_remedies(workload: Workload) -> list[str]:
    """What a user can still change to fit a training plan, leaving out what is set already."""
    remedies = []
    if set(workload.zero_levels) != {0, 1, 2, 3}:
        remedies.append("allow every sharding level (--zero 0,1,2,3)")
    if workload.recompute != "auto":
        remedies.append("let the planner recompute where it pays (--recompute auto)")
    remedies.append("lower --batch/--seq")
    if workload.optimizer != "sgd":
        remedies.append("use --optimizer sgd (no optimizer state)")
    return remedies


def _infeasible_message(
    outcomes: list[MeshOutcome], gpus: int, capacity: float, workload: Workload
) -> str:
    with_mem = [o for o in outcomes if o.min_memory_bytes is not None]
    if with_mem:
        best = min(with_mem, key=lambda o: o.min_memory_bytes)
        need = best.min_memory_bytes
        if need > capacity:
            more = gpus * need / capacity
            target = 1
            while target < more:
                target *= 2
            if workload.kind == "train":
                return (
                    f"the model does not fit on {gpus} GPUs under any plan: the smallest plan "
                    f"(mesh {best.mesh}, dp sharding levels {list(workload.zero_levels)}, "
                    f"recompute {workload.recompute}, optimizer {workload.optimizer}) needs "
                    f"{_gib(need)} per GPU; {_gib(capacity)} available. At least ~{target} "
                    f"GPUs are needed at batch {workload.batch} × seq {workload.seq}; or "
                    + ", ".join(_training_memory_remedies(workload))
                )
            return (
                f"the model does not fit on {gpus} GPUs under any plan: the smallest plan "
                f"(mesh {best.mesh}) needs {_gib(need)} per GPU; {_gib(capacity)} available. "
                f"At least ~{target} GPUs are needed at this batch ({workload.batch}) and "
                f"context ({workload.context}); or lower --batch/--context, or use a "
                f"smaller --kv-dtype/--weight-dtype"
            )
        slo_fail = [o for o in with_mem if o.reason]
        if slo_fail:
            return f"no plan on {gpus} GPUs meets the constraints: {slo_fail[0].reason}"
    # Meshes ruled out by a block's own limits say more than those a forced degree skipped.
    ranked = sorted(outcomes, key=lambda o: o.reason.startswith("--force"))
    reasons = "; ".join(f"mesh {o.mesh}: {o.reason}" for o in ranked[:6])
    return f"no mesh of {gpus} GPUs can run this workload: {reasons}"
