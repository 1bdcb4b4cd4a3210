"""The planning pipeline as a function: model source + hardware + workload -> Plan."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cost_models import HardwareSpec, load_hardware
from ir.errors import InputError, PlannerError
from ir.graph import Graph
from ir.plan import BlockPlan, Plan
from ir.workload import Workload
from passes.parallelize.build import ForceRule
from passes.parallelize.search import MeshOutcome, SearchResult, search
from passes.parallelize.strategies import BY_NAME, DEFAULT_STRATEGIES
from passes.shared_params import shared_param_readers
from planner.frontend import LoadedModel, load_graph
from planner.model_source import ModelSource

log = logging.getLogger(__name__)
# Mesh search enumerates the divisors of the GPU count; beyond a few hundred thousand GPUs
# no single model replica is planned (and a typo of 10**20 would never finish).
MAX_GPUS = 2**18


@dataclass
class PlanRun:
    """A plan plus what only the report shows (wall times, the search's outcomes)."""

    plan: Plan
    graph: Graph
    result: SearchResult
    seconds: dict[str, float] = field(default_factory=dict)


def resolve_hardware(name_or_path: str) -> HardwareSpec:
    return load_hardware(name_or_path)


def make_plan(
    source: ModelSource | LoadedModel,
    *,
    hardware: str | HardwareSpec,
    gpus: int,
    workload: Workload,
    force: list[str] | None = None,
    per_layer: bool = False,
    time_limit_s: float = 60.0,
    cuda_graphs: bool = False,
    strategies: frozenset[str] | None = None,
    verified_only: bool = True,
) -> PlanRun:
    """Plan `source` for `gpus` GPUs. By default only strategies whose generated program is
    verified are offered (`verified_only=False` plans with every applicable strategy)."""
    if not isinstance(gpus, int) or gpus < 1:
        raise InputError(f"--gpus must be a positive integer, got {gpus!r}")
    if gpus > MAX_GPUS:
        raise InputError(
            f"--gpus {gpus} is beyond what helixplan plans for (at most {MAX_GPUS}); give the "
            "GPU count of one model replica's cluster"
        )
    if not time_limit_s > 0:
        raise InputError(f"--time-limit must be a positive number of seconds, got {time_limit_s}")
    t0 = time.perf_counter()
    loaded = source if isinstance(source, LoadedModel) else load_graph(source)
    warn_unrecognized(loaded.graph)
    t1 = time.perf_counter()
    hw = hardware if isinstance(hardware, HardwareSpec) else load_hardware(hardware)
    rules = [ForceRule.parse(f) for f in force or []]
    seconds = dict(loaded.seconds)
    seconds.update({"load": t1 - t0, "search": 0.0, "assemble": 0.0})

    def plan_with(rules: list[ForceRule]) -> tuple[SearchResult, Plan]:
        t = time.perf_counter()
        result = search(
            loaded.graph, workload, hw, gpus, force=rules, share_groups=not per_layer,
            time_limit_s=time_limit_s, cuda_graphs=cuda_graphs,
            compact=not per_layer and not rules, full_best=True,
            strategies=strategies if strategies is not None else DEFAULT_STRATEGIES,
            verified_only=verified_only,
        )
        t_search = time.perf_counter()
        plan = assemble_plan(loaded, hw, workload, result, rules, time_limit_s=time_limit_s)
        seconds["search"] += t_search - t
        seconds["assemble"] += time.perf_counter() - t_search
        return result, plan

    result, plan = plan_with(rules)
    if workload.kind == "train":
        split = split_shared_weights(loaded.graph, plan.blocks)
        if split:
            result, plan = plan_with(_shared_weights_follow_owner(loaded.graph, plan, split, rules))
    return PlanRun(plan=plan, graph=loaded.graph, result=result, seconds=seconds)


def warn_unrecognized(graph: Graph) -> None:
    """A block the recognizer could not classify (kind "other") is planned replicated — only
    `replicate` applies to it — and says so, by name, when it holds weights (each GPU then
    holds them whole). One without weights (transformers' rotary embedding, a mask) costs
    nothing more replicated, and is named at debug level only."""
    by_name = {op.name: op for op in graph.ops}
    for block in graph.blocks:
        if block.kind != "other":
            continue
        paths = sorted({by_name[n].module_path for n in block.ops if n in by_name} - {""})
        holds_weights = block.param_count + block.shared_param_count > 0
        log.log(
            logging.WARNING if holds_weights else logging.DEBUG,
            "helixplan: block %r (module %s, %d ops) is not a kind helixplan recognizes "
            "(embedding, attention, mlp, moe, norm, lm_head); it is planned replicated, run "
            "whole on every rank",
            block.name, ", ".join(paths[:3]) or "-", len(block.ops),
        )


def make_plan_max_batch(
    source: ModelSource | LoadedModel,
    *,
    hardware: str | HardwareSpec,
    gpus: int,
    workload: Workload,
    max_batch: int = 1 << 16,
    **kwargs,
) -> PlanRun:
    """The largest batch whose optimal plan meets the workload's SLO (and fits memory): the
    most tokens/s per GPU at that latency. Doubling finds a bracket, bisection the edge."""
    from dataclasses import replace

    from ir.errors import InfeasiblePlanError

    loaded = source if isinstance(source, LoadedModel) else load_graph(source)

    def attempt(batch: int) -> PlanRun | None:
        try:
            return make_plan(loaded, hardware=hardware, gpus=gpus,
                             workload=replace(workload, batch=batch), **kwargs)
        except InfeasiblePlanError:
            return None

    best = attempt(1)
    if best is None:
        slo = workload.ttl_slo_s or workload.ttft_slo_s
        raise InfeasiblePlanError(
            f"even batch 1 misses the SLO of {slo * 1e3:.3g} ms (or does not fit) on {gpus} "
            "GPUs; relax the SLO or add GPUs"
        )
    low, high = 1, None
    batch = 2
    while batch <= max_batch:
        run = attempt(batch)
        if run is None:
            high = batch
            break
        best, low = run, batch
        batch *= 2
    if high is not None:
        while high - low > 1:
            mid = (low + high) // 2
            run = attempt(mid)
            if run is None:
                high = mid
            else:
                best, low = run, mid
    return best


def _rank_map(outcome: MeshOutcome, hw: HardwareSpec) -> list[dict]:
    mesh = outcome.mesh
    out = []
    for rank in range(mesh.world_size):
        out.append({
            "rank": rank,
            "coords": mesh.coords(rank),
            "gpu": rank,
            "domain": rank // hw.scaleup_domain_gpus,
            "local_gpu": rank % hw.scaleup_domain_gpus,
        })
    return out



def _weight_layout(bp: BlockPlan) -> tuple[tuple[str, int], ...]:
    """How a block plan holds the weights it reads: its split degrees, or () when whole."""
    return tuple(sorted(bp.degrees.items())) if BY_NAME[bp.strategy].splits_weights else ()


def shared_copy_correction(graph: Graph, blocks: list[BlockPlan], weight_bytes: float) -> float:
    """Bytes per GPU that block prices count beyond what the GPUs hold of weights several
    blocks read (passes/shared_params.py): the priced copies (the owner's, and each reader's
    share in its layout) less one copy per distinct layout among all readers. Positive where
    readers share the owner's layout; negative only under --per-layer, where the readers of
    one group may hold several layouts."""
    by_name = {bp.name: bp for bp in blocks}
    correction = 0.0
    for v, readers in shared_param_readers(graph).items():
        numel = graph.params[v].numel
        held: set[tuple] = set()
        for block, share in readers:
            layout = _weight_layout(by_name[block.name])
            copy = numel / math.prod(size for _, size in layout)
            correction += share * copy
            if layout not in held:
                held.add(layout)
                correction -= copy
    return correction * weight_bytes


def _shared_weights_follow_owner(
    graph: Graph, plan: Plan, split: list[tuple[str, str, BlockPlan]], rules: list[ForceRule]
) -> list[ForceRule]:
    """`rules` plus, for each block reading a weight in another layout than the block owning
    it (`split`, from `split_shared_weights`), a rule giving it the owner's strategy and
    degrees: the training program holds every weight in one layout (the gradient of a tied
    table is one tensor). A split the user forced is an input error."""
    by_name = {bp.name: bp for bp in plan.blocks}
    extra = []
    for param, reader, owner in split:
        forced_reader = [r.text for r in rules if r.matches(reader)]
        forced_owner = [r.text for r in rules if r.matches(owner.name)]
        if forced_reader and forced_owner:
            raise InputError(
                f"a training plan holds weight {graph.params[param].name!r} in one layout, but "
                f"--force {' '.join(dict.fromkeys(forced_owner + forced_reader))} gives "
                f"{owner.name} (which owns it) and {reader} (which reads it too) different "
                f"ones; force both to one strategy, e.g. --force '{reader}={owner.strategy}'"
            )
        # the block the user did not force follows the other
        leader, follower = (by_name[reader], owner.name) if forced_reader else (owner, reader)
        degrees = ",".join(f"{k}={v}" for k, v in sorted(leader.degrees.items()))
        extra.append(ForceRule.parse(f"{follower}={leader.strategy}" + (f"({degrees})" if degrees else "")))
    return [*rules, *extra]


def split_shared_weights(graph: Graph, blocks: list[BlockPlan]) -> list[tuple[str, str, BlockPlan]]:
    """(parameter, reader block, owner's plan) for each block reading a weight in another
    layout than its owner. A training program holds a weight in one layout only."""
    by_name = {bp.name: bp for bp in blocks}
    out = []
    for v, readers in shared_param_readers(graph).items():
        owner = by_name[readers[0][0].name]
        for block, _ in readers[1:]:
            if _weight_layout(by_name[block.name]) != _weight_layout(owner):
                out.append((v, block.name, owner))
    return out


def assemble_plan(
    loaded: LoadedModel, hw: HardwareSpec, workload: Workload, result: SearchResult,
    rules: list[ForceRule],
    *,
    time_limit_s: float | None = None,
) -> Plan:
    best = result.best
    built, sol = best.built, best.solution
    ctx = built.ctx
    blocks: list[BlockPlan] = []
    compute = 0.0
    per_collective: dict[str, float] = {}
    memory: dict[str, float] = {}
    for b in loaded.graph.blocks:
        option = sol.assignment[b.name]
        name, extras = built.meaning[option]
        strategy = BY_NAME[name]
        priced = built.priced[(b.name, option)]
        compute += priced.compute_s
        for k, v in priced.comm_s.items():
            per_collective[k] = per_collective.get(k, 0.0) + v
        for k, v in priced.memory.items():
            memory[k] = memory.get(k, 0.0) + v
        degrees = strategy.degrees(ctx)
        blocks.append(BlockPlan(
            name=b.name, kind=b.kind, group=b.group, strategy=name, degrees=degrees,
            extras=dict(extras), layout_in=strategy.layout_in, layout_out=strategy.layout_out,
            dims=dict(b.dims), predicted_s=priced.time_s, compute_s=priced.compute_s,
            comm_s=dict(priced.comm_s), memory_bytes=priced.memory_bytes,
        ))
    notes: dict[str, list[str]] = {}
    for b in loaded.graph.blocks:
        name, extras = built.meaning[sol.assignment[b.name]]
        strategy = BY_NAME[name]
        if strategy.explain is not None and b.group not in notes:
            notes[b.group] = strategy.explain(b, ctx, dict(extras))
    # the edges' time and the first block's unprefetched gathers, less the level-3 gathers
    # that prefetch leaves exposed (already in the blocks' all_gather:params), is resharding
    edge_s = sol.objective_s - sum(bp.predicted_s for bp in blocks) - built.prefetch_exposed_s(sol.assignment)
    if edge_s > 1e-15:
        per_collective["reshard:tp"] = edge_s
    memory["workspace"] = result.fixed_bytes
    correction = 0.0 if workload.kind == "train" else shared_copy_correction(loaded.graph, blocks, ctx.weight_bytes)
    if correction:
        memory["weights"] -= correction
    exposed = sol.objective_s - compute
    alternatives = [
        {
            "mesh": best.mesh.to_dict(),
            "seconds": a.objective_s,
            "memory_bytes": a.memory_bytes,
            "changes": [
                {"group": c.unit, "blocks": c.num_blocks, "from": c.optimum_option, "to": c.option}
                for c in a.changes
            ],
            "why": a.reason,
        }
        for a in sol.alternatives
    ]
    for o in result.outcomes:
        if o is best:
            continue
        if o.solution is not None:
            alternatives.append({
                "mesh": o.mesh.to_dict(),
                "seconds": o.solution.objective_s,
                "memory_bytes": o.solution.memory_bytes,
                "changes": _strategy_summary(o),
                "why": f"best plan on mesh {o.mesh}",
            })
    # Plans within 1e-9 of each other tie (as in the mesh search) and keep their order.
    alternatives.sort(key=lambda a: float(f"{a['seconds']:.9g}"))
    excluded = [dict(e, mesh=str(best.mesh)) for e in built.excluded]
    excluded += [
        {"mesh": str(o.mesh), "reason": o.reason} for o in result.outcomes if o.solution is None
    ]
    return Plan(
        model=dict(loaded.source.to_dict()),
        hardware=hw.to_dict(),
        workload=asdict(workload),
        mesh=best.mesh.to_dict(),
        rank_map=_rank_map(best, hw),
        blocks=blocks,
        predicted={
            "objective": {"decode": "ttl", "prefill": "ttft", "train": "step_time"}[workload.kind],
            "seconds": sol.objective_s,
            "compute_s": compute,
            "exposed_comm_s": exposed,
            "per_collective_s": dict(sorted(per_collective.items())),
            "tokens_per_s_per_gpu": _throughput(workload, sol.objective_s, best.mesh.world_size),
            **({"notes": notes} if notes else {}),
        },
        memory={
            "per_gpu_bytes": sol.memory_bytes - correction,
            "capacity_bytes": result.capacity_bytes,
            "breakdown": dict(sorted(memory.items())),
        },
        solver={
            **search_optimality(result),
            "objective_s": sol.objective_s,
            "backend": sol.backend,
            "num_variables": sol.num_variables,
            "num_constraints": sol.num_constraints,
            "meshes_tried": len(result.outcomes),
            "forced": [r.text for r in rules],
            "time_limit_s": time_limit_s,
        },
        alternatives=alternatives[:8],
        excluded=excluded,
    )


def search_optimality(result: SearchResult) -> dict[str, object]:
    """Status, gap and proven lower bound of the plan over the whole mesh search.

    The plan is OPTIMAL only when every mesh's solve was proven (its optimum, or that it has
    no plan); a mesh cut short by the time limit contributes the lower bound its solver
    proved (objective × (1 − gap)), and one that found no plan in time contributes nothing
    proven (bound 0). gap = (objective − bound) / objective over the search."""
    best_s = result.best.solution.objective_s
    bounds = []
    for o in result.outcomes:
        if o.solution is not None:
            bounds.append(o.solution.objective_s * (1.0 - o.solution.gap))
        elif "infeasibility was not proven" in o.reason:
            bounds.append(0.0)
    bound_s = min([best_s, *bounds])
    gap = max(0.0, (best_s - bound_s) / best_s) if best_s > 0 else 0.0
    if gap <= 1e-9:
        gap, bound_s = 0.0, best_s
    return {"status": "OPTIMAL" if gap == 0.0 else "FEASIBLE", "gap": gap, "bound_s": bound_s}


def _strategy_summary(o: MeshOutcome) -> list[dict]:
    counts: dict[tuple[str, str], int] = {}
    for block in o.built.problem.blocks:  # a compact program has one block per group
        key = (block.group, o.solution.assignment[block.name])
        counts[key] = counts.get(key, 0) + o.built.group_sizes.get(block.group, 1)
    return [{"group": g, "blocks": n, "to": s} for (g, s), n in sorted(counts.items())]


def _throughput(workload: Workload, seconds: float, gpus: int) -> float:
    if seconds <= 0:
        return 0.0
    tokens = workload.batch * (workload.seq if workload.kind != "decode" else 1)
    return tokens / seconds / gpus


def write_outputs(
    run: PlanRun, out: str | Path, *, write_program: bool = True, unverified_ok: bool = False
) -> dict[str, Path]:
    """plan.json, report.md and (when the plan can be lowered) run_plan.py in `out`."""
    from planner.report import write_report

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".helixplan-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"--out {str(out)!r} cannot be written ({exc.strerror or exc}); give a directory "
            "you can create files in"
        ) from None
    paths = {"plan": run.plan.save(out / "plan.json")}
    paths["report"] = write_report(run, out / "report.md")
    if write_program:
        from planner.verify_runner import write_run_plan

        try:
            paths["program"] = write_run_plan(run.graph, run.plan, out)
        except PlannerError as err:
            if not unverified_ok:
                raise
            (out / "run_plan.py").unlink(missing_ok=True)
            with (out / "report.md").open("a") as f:
                f.write(f"\n## No program\n\nrun_plan.py was not written: {err}\n")
    return paths
