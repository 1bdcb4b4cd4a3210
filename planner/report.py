"""Human-readable views of a plan: the table, `explain`, and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ir.plan import Plan

if TYPE_CHECKING:
    from rich.table import Table

    from planner.api import PlanRun


def fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _mesh_text(mesh: dict[str, int]) -> str:
    used = [f"{k}={v}" for k, v in mesh.items() if v > 1]
    return "×".join(used) or "single GPU"


def group_rows(plan: Plan) -> list[dict]:
    rows: dict[tuple[str, str], dict] = {}
    for b in plan.blocks:
        key = (b.group, b.strategy)
        r = rows.get(key)
        if r is None:
            rows[key] = {
                "group": b.group, "kind": b.kind, "strategy": b.strategy,
                "degrees": ",".join(f"{k}={v}" for k, v in b.degrees.items()) or "-",
                "count": 1, "first": b.name, "time_s": b.predicted_s,
                "memory_bytes": b.memory_bytes, "comm": dict(b.comm_s),
            }
        else:
            r["count"] += 1
            r["time_s"] += b.predicted_s
            r["memory_bytes"] += b.memory_bytes
    return list(rows.values())


def training_rows(plan: Plan) -> list[dict]:
    """Per (group, zero level, recompute): the blocks' count (training plans)."""
    rows: dict[tuple[str, int, int], dict] = {}
    for b in plan.blocks:
        zero, recompute = int(b.extras.get("zero", 0)), int(b.extras.get("recompute", 0))
        key = (b.group, zero, recompute)
        if key not in rows:
            rows[key] = {"group": b.group, "zero": zero, "recompute": recompute, "count": 0}
        rows[key]["count"] += 1
    return list(rows.values())


def plan_table(plan: Plan) -> Table:
    from rich.table import Table  # only for a printed table: `plan --json` skips rich

    wl = plan.workload
    table = Table(
        title=(
            f"{wl['kind']} B={wl['batch']} T={wl['seq']} L={wl['context']} on "
            f"{plan.world_size}× {plan.hardware['name']}, mesh {_mesh_text(plan.mesh)}: "
            f"{plan.predicted['objective']} {fmt_s(plan.predicted['seconds'])}, "
            f"{fmt_bytes(plan.memory['per_gpu_bytes'])}/GPU "
            f"[{solver_status_text(plan.solver)}]"
        )
    )
    for col in ("group", "kind", "blocks", "strategy", "degrees", "time (all blocks)", "memory/GPU"):
        table.add_column(col)
    for r in group_rows(plan):
        table.add_row(
            r["group"], r["kind"], f"{r['count']} (e.g. {r['first']})", r["strategy"],
            r["degrees"], fmt_s(r["time_s"]), fmt_bytes(r["memory_bytes"]),
        )
    return table


def solver_status_text(solver: dict) -> str:
    """`OPTIMAL`, or `FEASIBLE, gap 3.1%` when the time limit stopped a solve before its proof."""
    if solver["status"] == "OPTIMAL":
        return "OPTIMAL"
    return f"{solver['status']}, gap {solver['gap']:.1%}"


def explain_text(plan: Plan) -> str:
    p, m, s = plan.predicted, plan.memory, plan.solver
    lines = [
        f"# Why this plan: {_mesh_text(plan.mesh)} on {plan.world_size}× {plan.hardware['name']}",
        "",
        f"Objective ({p['objective']}): **{fmt_s(p['seconds'])}** — compute "
        f"{fmt_s(p['compute_s'])}, exposed communication {fmt_s(p['exposed_comm_s'])}; "
        f"{p['tokens_per_s_per_gpu']:.1f} tokens/s per GPU.",
        f"Solver: {solver_status_text(s)} (proven lower bound {fmt_s(s.get('bound_s', p['seconds']))}, "
        f"time limit {s.get('time_limit_s')} s per mesh, {s['backend']}, "
        f"{s['num_variables']} variables, {s['num_constraints']} constraints, "
        f"{s['meshes_tried']} meshes tried).",
        "",
        "## Strategies",
    ]
    for r in group_rows(plan):
        lines.append(
            f"- `{r['group']}` ({r['count']} blocks, e.g. `{r['first']}`): **{r['strategy']}** "
            f"{r['degrees']} — {fmt_s(r['time_s'])} in all, {fmt_bytes(r['memory_bytes'])}/GPU"
        )
    for group, notes in p.get("notes", {}).items():
        lines += ["", f"## `{group}`: {next(r['strategy'] for r in group_rows(plan) if r['group'] == group)}"]
        lines += [f"- {n}" for n in notes]
    if plan.workload.get("kind") == "train":
        lines += ["", "## Training: dp sharding level and recomputation per group", ""]
        lines.append(
            f"Optimizer {plan.workload.get('optimizer')}; level 0 replicated, 1 optimizer state "
            "sharded over dp, 2 + gradients, 3 + parameters (FSDP-style); recompute re-runs "
            "the block's forward in backward."
        )
        for g in training_rows(plan):
            lines.append(
                f"- `{g['group']}` ({g['count']} blocks): zero level **{g['zero']}**, "
                f"recompute **{'yes' if g['recompute'] else 'no'}**"
            )
    lines += ["", "## Binding constraints"]
    used = m["per_gpu_bytes"] / m["capacity_bytes"]
    lines.append(
        f"- Memory: {fmt_bytes(m['per_gpu_bytes'])} of {fmt_bytes(m['capacity_bytes'])} per GPU "
        f"({used:.0%})" + (" — **binding**: faster plans need more memory" if used > 0.9 else "")
    )
    for k, v in m["breakdown"].items():
        lines.append(f"  - {k}: {fmt_bytes(v)}")
    slo = plan.workload.get("ttl_slo_s") or plan.workload.get("ttft_slo_s")
    if slo:
        lines.append(f"- SLO: {fmt_s(p['seconds'])} of a {fmt_s(slo)} budget")
    if s.get("forced"):
        lines.append(f"- Forced by the user: {', '.join(s['forced'])}")
    lines += ["", "## Runner-ups"]
    if not plan.alternatives:
        lines.append("- none (only one plan is possible)")
    for a in plan.alternatives:
        delta = a["seconds"] / p["seconds"] - 1 if p["seconds"] else 0.0
        changes = ", ".join(
            f"{c['group']}→{c['to']}" for c in a["changes"]
        ) or "same strategies"
        lines.append(
            f"- mesh {_mesh_text(a['mesh'])}: {fmt_s(a['seconds'])} ({delta:+.1%}), "
            f"{fmt_bytes(a['memory_bytes'])}/GPU — {changes}; {a['why']}"
        )
    lines += ["", "## Not offered"]
    for e in plan.excluded:
        if "strategy" in e:
            lines.append(f"- `{e['strategy']}` for `{e['group']}` on {e['mesh']}: {e['reason']}")
        else:
            lines.append(f"- mesh {e['mesh']}: {e['reason']}")
    return "\n".join(lines) + "\n"


def write_report(run: PlanRun, path: Path) -> Path:
    text = explain_text(run.plan)
    timing = ", ".join(f"{k} {v:.2f} s" for k, v in run.seconds.items() if not k.startswith("pass:"))
    text += f"\n## Planner wall time\n\n{timing}\n"
    path.write_text(text)
    return path
