"""Replanning a degraded cluster: after GPUs fail, each data-parallel replica that lost a GPU
is replanned on the largest GPU count its surviving GPUs can hold that splits every block
evenly (heads, KV heads and FFN width divisible by it); untouched replicas keep their plan.
The alternative is dropping the affected replicas; the report compares the throughput kept
both ways."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from cost_models import HardwareSpec
from ir.errors import InfeasiblePlanError, InputError
from ir.graph import Graph
from ir.mesh import Mesh
from ir.plan import Plan
from ir.workload import Workload
from planner.api import PlanRun, make_plan
from planner.frontend import LoadedModel, load_graph
from planner.model_source import resolve_source


@dataclass
class ReplicaReplan:
    """One affected replica: its surviving GPUs and the plan for the reduced degree (None when
    no reduced plan fits; the replica is then dropped)."""

    replica: int
    gpus: list[int]
    surviving: list[int]
    degree: int
    run: PlanRun | None
    why: str

    @property
    def tokens_per_s(self) -> float:
        if self.run is None:
            return 0.0
        return self.run.plan.predicted["tokens_per_s_per_gpu"] * self.degree


@dataclass
class ReplanResult:
    plan: Plan
    failed: list[int]
    replicas: int
    replica_tokens_per_s: float
    affected: list[ReplicaReplan]

    @property
    def healthy_replicas(self) -> int:
        return self.replicas - len(self.affected)

    @property
    def kept_if_replanned(self) -> float:
        total = self.replicas * self.replica_tokens_per_s
        kept = self.healthy_replicas * self.replica_tokens_per_s + sum(a.tokens_per_s for a in self.affected)
        return kept / total

    @property
    def kept_if_dropped(self) -> float:
        return self.healthy_replicas / self.replicas

    def to_dict(self) -> dict:
        return {
            "failed_gpus": self.failed,
            "replicas": self.replicas,
            "replica_gpus": self.plan.world_size // self.replicas,
            "replica_tokens_per_s": self.replica_tokens_per_s,
            "throughput_kept_replanned": self.kept_if_replanned,
            "throughput_kept_dropped": self.kept_if_dropped,
            "affected": [
                {
                    "replica": a.replica,
                    "gpus": a.gpus,
                    "surviving_gpus": a.surviving,
                    "degree": a.degree,
                    "mesh": a.run.plan.mesh if a.run else None,
                    "tokens_per_s": a.tokens_per_s,
                    "ttl_or_step_s": a.run.plan.predicted["seconds"] if a.run else None,
                    "why": a.why,
                }
                for a in self.affected
            ],
        }


def even_degrees(graph: Graph, limit: int) -> tuple[list[int], dict[int, str]]:
    """GPU counts up to `limit` (largest first) that split every attention block's heads and
    KV heads and every MLP/MoE block's FFN width evenly, and why each other count fails."""
    ok, why = [], {}
    for degree in range(limit, 0, -1):
        reason = ""
        for block in graph.blocks:
            d = block.dims
            if block.kind == "attention":
                names = ("q_heads",) if "kv_lora_rank" in d else ("q_heads", "kv_heads")
            elif block.kind in ("mlp", "moe"):
                names = ("ffn",)
            else:
                continue
            for name in names:
                if name in d and d[name] % degree:
                    reason = f"{block.name} has {name}={d[name]}, not divisible by {degree}"
                    break
            if reason:
                break
        if reason:
            why[degree] = reason
        else:
            ok.append(degree)
    return ok, why


def _replica_groups(mesh: Mesh) -> list[list[int]]:
    """Ranks of each data-parallel replica (equal dp coordinate)."""
    others = tuple(a for a in mesh.to_dict() if a != "dp")
    if not others:
        return [[r] for r in range(mesh.world_size)]
    return mesh.groups_over(others)


def load_plan_model(plan: Plan) -> LoadedModel:
    model = plan.model or {}
    if not model.get("path"):
        raise InputError("plan.json names no model file to replan; re-run `helixplan plan` on a model file")
    spec = model["path"] if model.get("kind") != "hf" else f"hf:{model['path']}"
    return load_graph(resolve_source(spec, dict(model.get("model_args") or {})))


def replan(plan: Plan, failed: list[int], *, loaded: LoadedModel | None = None,
           time_limit_s: float = 60.0) -> ReplanResult:
    """Replan every replica of `plan` that lost a GPU in `failed` (physical GPU ids, as in
    the plan's rank map) with the verified strategies, on its largest even split."""
    mesh = Mesh.of(**plan.mesh)
    gpu_of = {int(r["rank"]): int(r.get("gpu", r["rank"])) for r in plan.rank_map}
    known = sorted(gpu_of.values())
    unknown = sorted(set(failed) - set(known))
    if unknown:
        raise InputError(
            f"--failed names GPU(s) {unknown} that the plan does not use; it runs on GPUs "
            f"{known[0]}..{known[-1]}"
        )
    if not failed:
        raise InputError("--failed names no GPU; give a comma-separated list such as 3,17")
    loaded = loaded or load_plan_model(plan)
    hw = HardwareSpec.from_dict(plan.hardware, origin="plan.json hardware")
    groups = _replica_groups(mesh)
    replicas = len(groups)
    wl_fields = dict(plan.workload)
    if wl_fields["batch"] % replicas:
        raise InputError(f"plan batch {wl_fields['batch']} does not split over its {replicas} replicas")
    replica_workload = Workload(**dict(wl_fields, batch=wl_fields["batch"] // replicas))
    replica_tokens_per_s = plan.predicted["tokens_per_s_per_gpu"] * plan.world_size / replicas
    affected = []
    for index, ranks in enumerate(groups):
        gpus = [gpu_of[r] for r in ranks]
        surviving = [g for g in gpus if g not in failed]
        if len(surviving) == len(gpus):
            continue
        degrees, why_not = even_degrees(loaded.graph, len(surviving))
        run, why, degree = None, "", 0
        for degree in degrees:
            try:
                run = _plan_reduced(loaded, plan, hw, degree, replica_workload, time_limit_s)
            except InfeasiblePlanError as exc:
                why = f"{degree} GPUs: {exc}"
                continue
            skipped = [f"{d}: {why_not[d]}" for d in range(len(surviving), degree, -1) if d in why_not]
            why = f"largest even split of {len(surviving)} surviving GPUs" + (
                f" ({'; '.join(skipped)})" if skipped else "")
            break
        if run is not None:
            run.plan = replace(run.plan, rank_map=[_on_gpu(r, surviving[r["rank"]], hw)
                                                   for r in run.plan.rank_map])
        else:
            degree = 0
            why = why or "no GPU count splits the model evenly"
        affected.append(ReplicaReplan(index, gpus, surviving, degree, run, why))
    return ReplanResult(plan, sorted(failed), replicas, replica_tokens_per_s, affected)


def _on_gpu(entry: dict, gpu: int, hw: HardwareSpec) -> dict:
    """A rank-map entry moved to physical GPU `gpu` (a surviving one)."""
    return dict(entry, gpu=gpu, domain=gpu // hw.scaleup_domain_gpus,
                local_gpu=gpu % hw.scaleup_domain_gpus)


def reduced_rules(plan: Plan, degree: int) -> list[str]:
    """Keep each tensor-split block tensor-split, at the reduced degree."""
    from passes.parallelize.strategies import BY_NAME

    rules = []
    for b in plan.blocks:
        strategy = BY_NAME.get(b.strategy)
        if strategy is not None and strategy.splits_weights and b.degrees and set(b.degrees) == {"tp"}:
            rules.append(f"{b.name}={b.strategy}(tp={degree})")
    return rules


def _plan_reduced(loaded: LoadedModel, plan: Plan, hw: HardwareSpec, degree: int,
                  workload: Workload, time_limit_s: float) -> PlanRun:
    """The replica's plan on `degree` GPUs: the original per-block strategies at the new
    degree when they still apply, else the planner's free choice."""
    rules = reduced_rules(plan, degree) if degree > 1 else []
    if rules:
        try:
            return make_plan(loaded, hardware=hw, gpus=degree, workload=workload, force=rules,
                             time_limit_s=time_limit_s)
        except (InfeasiblePlanError, InputError):
            pass  # the kept strategies do not fit at this degree: let the planner choose
    return make_plan(loaded, hardware=hw, gpus=degree, workload=workload, time_limit_s=time_limit_s)


def write_replan(result: ReplanResult, out: Path) -> dict[str, Path]:
    import json

    from planner.api import write_outputs

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for a in result.affected:
        if a.run is not None:
            written = write_outputs(a.run, out / f"replica{a.replica}")
            paths[f"replica{a.replica}"] = written["plan"]
    summary = out / "replan.json"
    summary.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    paths["summary"] = summary
    return paths

