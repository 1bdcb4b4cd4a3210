"""Expert parallelism in the generated program: exact against the single-process model.

Every case runs the generated `run_plan.py` for all ranks as threads of this process
(`planner.verify_runner.run_threaded`): a prompt, then teacher-forced decode steps, every
step's logits compared (fp32, max abs err <= 1e-4 x max(1, |ref|)), and each rank's weight
bytes held against the plan (the experts split over the model group).

The MoE block runs `ep` (experts split over kvp×tp, replicated residual stream, one
all-reduce), attention (DeepSeek: latent attention, heads split, latent cache replicated)
and dense MLPs `tp`, embedding and LM head `vocab`; or `ep_dispatch` with every other block
`dp` (attention data parallel: the batch split over kvp×tp, tokens sent to their experts'
ranks by all-to-all). The routing is
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

MIXTRAL_ARGS = {"experts": "8", "kv_heads": "4"}
DEEPSEEK_ARGS = {"router_skew": "0.3"}


def moe_plan(graph: Graph, mesh: dict[str, int], strategies: dict[str, str], workload: dict,
             helix_extras: dict | None = None) -> Plan:
    """A hand-made plan (kind -> strategy) with the memory breakdown of its lowered program."""
    full_mesh = {"dp": 1, "cp": 1, "kvp": 1, "tp": 1, "ep": 1, **mesh}
    blocks = []
    for b in graph.blocks:
        s = strategies.get(b.kind, "replicate")
        layout = "shard_batch" if s in ("dp", "ep_dispatch") else "replicate"
        degrees = {a: full_mesh[a] for a in ("kvp", "tp") if full_mesh[a] > 1} if s != "replicate" else {}
        blocks.append(
            BlockPlan(
                name=b.name, kind=b.kind, group=b.group, strategy=s, degrees=degrees,
                layout_in=layout, layout_out=layout, dims=dict(b.dims),
                extras=dict(helix_extras or {}) if s == "helix" else {},
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
# attention data parallel + EP: every block splits the batch; MoE tokens go by all-to-all
DP_EP = {"attention": "dp", "mlp": "dp", "norm": "dp", "embedding": "dp", "lm_head": "dp", "moe": "ep_dispatch"}
DECODE4 = {"kind": "decode", "batch": 4, "seq": 1, "context": 6}
# TP×EP: experts over kvp, each expert's FFN columns over tp
TP_EP = {**EP, "moe": "tp_ep"}


def _graph(example: str, args: dict[str, str]) -> Graph:
    return loaded(str(ROOT / "examples" / example), **args).graph


CASES = [
    ("mixtral.py", MIXTRAL_ARGS, {"tp": 2}, EP),
    ("mixtral.py", MIXTRAL_ARGS, {"kvp": 2, "tp": 2}, EP),
    ("mixtral.py", MIXTRAL_ARGS, {"dp": 2, "tp": 2}, EP),
    ("deepseek.py", DEEPSEEK_ARGS, {"tp": 2}, EP),
    ("deepseek.py", DEEPSEEK_ARGS, {"tp": 4}, EP),
    ("deepseek.py", DEEPSEEK_ARGS, {"dp": 2, "tp": 2}, EP),
    ("mixtral.py", MIXTRAL_ARGS, {"tp": 2}, DP_EP),
    ("mixtral.py", MIXTRAL_ARGS, {"kvp": 2, "tp": 2}, DP_EP),
    ("deepseek.py", DEEPSEEK_ARGS, {"tp": 2}, DP_EP),
    ("deepseek.py", DEEPSEEK_ARGS, {"tp": 4}, DP_EP),
    ("mixtral.py", MIXTRAL_ARGS, {"tp": 2}, TP_EP),
    ("mixtral.py", MIXTRAL_ARGS, {"kvp": 2, "tp": 2}, TP_EP),
    ("deepseek.py", DEEPSEEK_ARGS, {"kvp": 2, "tp": 2}, TP_EP),
]


@pytest.mark.parametrize(
    ("example", "args", "mesh", "strategies"), CASES,
    ids=[
        f"{e.removesuffix('.py')}-{'x'.join(f'{k}{v}' for k, v in m.items())}-{s['moe']}"
        for e, _, m, s in CASES
    ],
)
def test_expert_parallel_decode_is_exact(example, args, mesh, strategies, tmp_path):
    graph = _graph(example, args)
    workload = DECODE4 if strategies is DP_EP else DECODE
    plan = moe_plan(graph, mesh, strategies, workload)
    path = write_run_plan(graph, plan, tmp_path)
    argv = program_args(workload="decode", batch=workload["batch"], seq=1, context=6, steps=6)
    results = run_threaded(path, plan.world_size, argv)
    report = judge(plan, results, plan.world_size)
    assert report.ok, (report.max_abs_err, report.ref_scale)
    assert report.memory_ok, report.problems
    assert results[0]["steps_checked"] == 7


def _expert_token_counts(example: str, args: dict[str, str], batch: int, seq: int) -> list[list[int]]:
    """Tokens per expert in each MoE layer of the reference model on a prompt (the weights
    run_plan.py builds: seed 0), read from the dense routing weights the experts receive."""
    from planner.model_source import load_module_file

    mod = load_module_file(str(ROOT / "examples" / example))
    torch.manual_seed(0)
    model = mod.build_model(**args)
    seen: list[list[int]] = []
    for name, sub in model.named_modules():
        if name.endswith("mlp.experts"):
            sub.register_forward_pre_hook(lambda _m, a: seen.append((a[1] != 0).sum(0).tolist()))
    with torch.no_grad():
        model(**mod.example_inputs("prefill", batch, seq, 0, model=model))
    return seen


def test_skewed_routing_leaves_experts_and_ranks_idle():
    """The DeepSeek case's prompt: some experts get no token, one gets most of them, and in
    a layer every expert of the second of two ep ranks (experts 4..7) is idle."""
    counts = _expert_token_counts("deepseek.py", DEEPSEEK_ARGS, 2, DECODE["context"])
    tokens = 2 * DECODE["context"]
    assert counts and all(sum(c) == 2 * tokens for c in counts)  # top-2
    assert all(min(c) == 0 for c in counts)
    assert max(max(c) for c in counts) >= tokens * 2 // 3
    assert any(sum(c[4:]) == 0 for c in counts)


def test_ep_lowering_splits_experts_and_reduces_once():
    graph = _graph("deepseek.py", DEEPSEEK_ARGS)
    program = lower(graph, moe_plan(graph, {"kvp": 2, "tp": 2}, EP, DECODE))
    weights = {w.fqn: (w.layout.describe(), w.local_shape) for w in program.weights}
    assert weights["model.layers.1.mlp.experts.gate_up_proj"] == ("kvp=Shard(0) tp=Shard(0)", (2, 128, 128))
    assert weights["model.layers.1.mlp.experts.down_proj"][1] == (2, 128, 64)
    assert weights["model.layers.1.mlp.gate.weight"][0] == "kvp=Replicate tp=Replicate"
    assert weights["model.layers.1.mlp.shared_experts.down_proj.weight"][0] == "kvp=Shard(1) tp=Shard(1)"
    block = next(b for b in program.blocks if b.name == "layers.1.moe")
    kernels = [s for s in block.steps if isinstance(s, Compute) and s.target == "moe_experts"]
    assert len(kernels) == 1
    assert not any(isinstance(s, Compute) and s.target in ("einsum", "scatter.src") for s in block.steps)
    reduces = [s for s in block.steps if isinstance(s, Collective)]
    assert [(s.kind, s.axis) for s in reduces] == [("all_reduce", "kvp_tp")]
    # latent attention under tp: per-head projections split, low-rank ones and the cache whole
    attn = "model.layers.1.self_attn."
    assert weights[attn + "q_b_proj.weight"] == ("kvp=Shard(0) tp=Shard(0)", (24, 64))
    assert weights[attn + "kv_b_proj.weight"][0] == "kvp=Shard(0) tp=Shard(0)"
    assert weights[attn + "o_proj.weight"][0] == "kvp=Shard(1) tp=Shard(1)"
    assert weights[attn + "q_a_proj.weight"][0] == "kvp=Replicate tp=Replicate"
    assert weights[attn + "kv_a_proj_with_mqa.weight"][0] == "kvp=Replicate tp=Replicate"
    cache = next(p for p in program.inputs if p.name == "past_kv_1")
    assert program.values[cache.local].layout.is_replicated
    # absorbed form: one mla_attention over the latent, no SDPA and no per-head K/V expansion
    steps = next(b for b in program.blocks if b.name == "layers.1.attention").steps
    targets = [s.target for s in steps if isinstance(s, Compute)]
    assert targets.count("mla_attention") == 1
    assert "scaled_dot_product_attention" not in targets and "expand" not in targets


HELIX_EP = {"attention": "helix", "mlp": "tp", "moe": "ep", "embedding": "vocab", "lm_head": "vocab"}
HELIX_CASES = [({"kvp": 2}, 1), ({"kvp": 4}, 2)]


@pytest.mark.parametrize(("mesh", "hopb"), HELIX_CASES, ids=[f"kvp{m['kvp']}-hopb{h}" for m, h in HELIX_CASES])
def test_latent_helix_with_expert_parallel_ffn_is_exact(mesh, hopb, tmp_path):
    """DeepSeek-like decode: Helix over the latent cache (TPA = 1, absorbed form, round-robin
    appends of 2 tokens, uneven caches) with the MoE as `ep` over the same kvp ranks; 16
    teacher-forced steps."""
    graph = _graph("deepseek.py", DEEPSEEK_ARGS)
    workload = {"kind": "decode", "batch": 4, "seq": 1, "context": 8}
    plan = moe_plan(graph, mesh, HELIX_EP, workload, helix_extras={"hopb": hopb, "append_block": 2})
    program = lower(graph, plan)
    attn = next(b for b in program.blocks if b.name == "layers.1.attention")
    targets = [s.target for s in attn.steps if isinstance(s, Compute)]
    assert targets.count("mla_helix_partial") == hopb and "scaled_dot_product_attention" not in targets
    path = write_run_plan(graph, plan, tmp_path)
    argv = program_args(workload="decode", batch=4, seq=1, context=8, steps=16) + ["--uneven-cache"]
    results = run_threaded(path, plan.world_size, argv)
    report = judge(plan, results, plan.world_size)
    assert report.ok, (report.max_abs_err, report.ref_scale)
    assert report.memory_ok, report.problems
    assert results[0]["steps_checked"] == 17


def test_gqa_helix_with_tp_ep_ffn_is_exact(tmp_path):
    """Mixtral-like decode: Helix attention over kvp2×tpa2 and the MoE as TP×EP (experts over
    kvp, FFN columns over tp) on the same 4 ranks."""
    graph = _graph("mixtral.py", MIXTRAL_ARGS)
    workload = {"kind": "decode", "batch": 4, "seq": 1, "context": 8}
    plan = moe_plan(graph, {"kvp": 2, "tp": 2}, {**HELIX_EP, "moe": "tp_ep"}, workload,
                    helix_extras={"hopb": 2, "append_block": 2})
    program = lower(graph, plan)
    weights = {w.fqn: (w.layout.describe(), w.local_shape, w.view) for w in program.weights}
    gate_up = weights["model.layers.0.mlp.experts.gate_up_proj"]
    assert gate_up == ("kvp=Shard(0) tp=Shard(2)", (4, 256, 128), (8, 2, 256, 128))
    assert weights["model.layers.0.mlp.experts.down_proj"][:2] == ("kvp=Shard(0) tp=Shard(2)", (4, 128, 128))
    path = write_run_plan(graph, plan, tmp_path)
    argv = program_args(workload="decode", batch=4, seq=1, context=8, steps=12) + ["--uneven-cache"]
    results = run_threaded(path, plan.world_size, argv)
    report = judge(plan, results, plan.world_size)
    assert report.ok, (report.max_abs_err, report.ref_scale)
    assert report.memory_ok, report.problems


def test_dispatch_under_torchrun_is_exact(tmp_path):
    """The uneven all_to_all_single dispatch on real gloo processes (2 ranks, DeepSeek-like
    with skewed routing: one rank's experts receive no token in some layers)."""
    from planner.verify_runner import run_torchrun

    graph = _graph("deepseek.py", DEEPSEEK_ARGS)
    plan = moe_plan(graph, {"tp": 2}, DP_EP, DECODE4)
    path = write_run_plan(graph, plan, tmp_path)
    argv = program_args(workload="decode", batch=4, seq=1, context=6, steps=3)
    results = run_torchrun(path, 2, argv)
    report = judge(plan, results, 2)
    assert report.ok, (report.max_abs_err, report.ref_scale)
    assert report.memory_ok, report.problems
