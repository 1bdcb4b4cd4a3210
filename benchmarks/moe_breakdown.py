"""DeepSeek-V3-shaped decode: the optimal plan and one MoE layer's breakdown (attention,
dispatch, experts, combine) per hardware setup. Planning only (no GPU needed).

Run: .venv/bin/python benchmarks/moe_breakdown.py [--batch 64] [--context 4096]
Prints, per setup, the mesh, each block group's strategy and time, and for one decoder layer
the predicted attention time and the MoE block split into router/shared experts, dispatch,
routed experts and combine (the all-reduce for `ep`, the return all-to-all for
`ep_dispatch`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cost_models import CostModel, load_hardware  # noqa: E402
from ir.mesh import Mesh  # noqa: E402
from ir.workload import Workload  # noqa: E402
from passes.parallelize.context import PlanContext  # noqa: E402
from passes.parallelize.strategies.ep import moe_parts  # noqa: E402
from passes.parallelize.strategy import MODEL_AXES  # noqa: E402
from planner.api import make_plan  # noqa: E402
from planner.frontend import load_graph  # noqa: E402
from planner.model_source import resolve_source  # noqa: E402

SETUPS = (("h100-sxm", 16, 64), ("gb200-nvl72", 64, 256))


def breakdown(run, hardware: str, workload: Workload) -> dict:
    plan = run.plan
    blocks = {b.name: b for b in plan.blocks}
    moe = next(b for b in plan.blocks if b.kind == "moe")
    layer = moe.name.rsplit(".", 1)[0]
    attention = blocks[f"{layer}.attention"]
    mesh = Mesh.of(**{k: v for k, v in plan.mesh.items() if v > 1})
    ctx = PlanContext(workload=workload, cost=CostModel(hardware=load_hardware(hardware)), mesh=mesh)
    block = next(b for b in run.graph.blocks if b.name == moe.name)
    n = ctx.group_size(MODEL_AXES)
    rows = ctx.replica_batch() * workload.seq
    groups, ffn_split, shared_split = {
        "ep": (n, 1, n),
        "ep_dispatch": (n, 1, 1),
        "tp_ep": (mesh.size("kvp"), mesh.size("tp"), n),
    }.get(moe.strategy, (1, 1, 1))
    seconds, _ = moe_parts(block, ctx, rows, expert_groups=groups, ffn_split=ffn_split,
                           shared_split=shared_split)
    comm = moe.comm_s or {}
    dispatch = sum(v for k, v in comm.items() if k.endswith(":dispatch"))
    combine = sum(v for k, v in comm.items() if not k.endswith(":dispatch"))
    return {
        "hardware": hardware,
        "gpus": plan.world_size,
        "batch": workload.batch,
        "context": workload.context,
        "mesh": {k: v for k, v in plan.mesh.items() if v > 1},
        "ttl_ms": plan.predicted["seconds"] * 1e3,
        "strategies": {b.group: b.strategy for b in plan.blocks},
        "layer": layer,
        "attention_us": attention.predicted_s * 1e6,
        "attention_strategy": attention.strategy,
        "attention_extras": attention.extras,
        "moe_strategy": moe.strategy,
        "moe_us": moe.predicted_s * 1e6,
        "router_and_shared_us": (seconds["router"] + seconds.get("shared_experts", 0.0)) * 1e6,
        "dispatch_us": dispatch * 1e6,
        "experts_us": seconds["experts"] * 1e6,
        "combine_us": combine * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--weight-dtype", default="fp8")
    args = parser.parse_args()
    loaded = load_graph(resolve_source("examples/deepseek.py", {"preset": "deepseek-v3"}))
    for hardware, gpus, batch in SETUPS:
        workload = Workload(kind="decode", batch=batch, seq=1, context=args.context,
                            weight_dtype=args.weight_dtype)
        run = make_plan(loaded, hardware=hardware, gpus=gpus, workload=workload)
        print(json.dumps(breakdown(run, hardware, workload), indent=1))


if __name__ == "__main__":
    main()
