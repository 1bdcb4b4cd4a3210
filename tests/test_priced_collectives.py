"""Every collective the generated program runs is one the cost model prices, and nothing is
priced that the program does not run (tests/priced_collectives.py says what "matches" means).

For each verified strategy on the example models (tiny sizes) and the workloads it applies
to, a plan is made with `--force`, lowered to the rank program, and compared block by block
and edge by edge with the plan's `comm_s` and edge layouts. The checks that found a gap
when written: tp_sp norms priced an all-gather and a reduce-scatter the program does not run;
the training program all-reduces the gradients of every weight held whole over tp
(replicated blocks, norms, MLA's latent projections), which was priced only for blocks fed
different tokens; the vocab-parallel backward was priced as Megatron runs it, not as the
program's adjoints do. Below: the check itself can fail, its list of communicating runtime
kernels is complete, and the MLA Helix combine's value projection priced by hand."""

from __future__ import annotations

import dataclasses
import re

import pytest

from cost_models import CostModel, KernelWork, load_hardware, sliced_overlap
from ir.mesh import Mesh
from ir.workload import Workload
from passes.lower import lower
from passes.parallelize.context import PlanContext
from passes.parallelize.strategies.helix import explain_helix, helix_terms, price_helix
from planner.api import make_plan
from tests.conftest import EXAMPLES, ROOT
from tests.priced_collectives import RUNTIME_COLLECTIVES, RUNTIME_NOT_KERNELS, mismatches

DECODE = Workload(kind="decode", batch=4, seq=1, context=64)
PREFILL = Workload(kind="prefill", batch=4, seq=32, context=0)
PREFILL_CACHED = Workload(kind="prefill", batch=4, seq=32, context=16)
TRAIN = Workload(kind="train", batch=4, seq=32, context=0)
MIXTRAL = {"experts": "8", "kv_heads": "4"}
DEEPSEEK = {"router_skew": "0.3"}
TP2 = ["layers.*.attention=tp(tp=2)", "layers.*.mlp=tp(tp=2)"]
SP2 = ["layers.*.attention=tp_sp(tp=2)", "layers.*.mlp=tp_sp(tp=2)", "layers.*.norm_*=tp_sp(tp=2)"]
VOCAB2 = ["lm_head=vocab(tp=2)", "embedding=vocab(tp=2)"]

# (id, example, model args, workload, gpus, --force rules)
CASES = [
    ("llama-decode-helix-kvp2-tpa2", "llama.py", {}, DECODE, 4,
     ["layers.*.attention=helix(kvp=2,tpa=2)", "layers.*.mlp=tp(kvp=2,tp=2)"]),
    ("llama-decode-helix-hopb2", "llama.py", {}, DECODE, 4, ["layers.*.attention=helix(kvp=4,tpa=1,hopb=2)"]),
    ("llama-decode-tp-vocab", "llama.py", {}, DECODE, 2, TP2 + VOCAB2),
    ("llama-decode-dp", "llama.py", {}, DECODE, 2, ["layers.*.attention=dp(tp=2)", "layers.*.mlp=dp(tp=2)"]),
    ("llama-prefill-tp_sp", "llama.py", {}, PREFILL, 2, SP2),
    ("llama-prefill-cp_pass_kv", "llama.py", {}, PREFILL, 2, ["layers.*.attention=cp_pass_kv(cp=2)"]),
    ("llama-prefill-cp_pass_q", "llama.py", {}, PREFILL_CACHED, 2, ["layers.*.attention=cp_pass_q(cp=2)"]),
    ("llama-prefill-cp-tp", "llama.py", {}, PREFILL, 4, ["layers.*.attention=cp_pass_kv(cp=2,tp=2)"]),
    ("llama-train-tp-vocab", "llama.py", {}, TRAIN, 2, TP2 + VOCAB2),
    ("llama-train-tp-head-only", "llama.py", {}, TRAIN, 2, [*TP2, "lm_head=vocab(tp=2)"]),
    ("llama-train-tp_sp", "llama.py", {}, TRAIN, 2, SP2),
    ("llama-train-dp-tp", "llama.py", {}, TRAIN, 4, ["layers.*.attention=tp(tp=2,dp=2)", "layers.*.mlp=tp(tp=2,dp=2)"]),
    ("llama-train-dp", "llama.py", {}, TRAIN, 2, ["layers.*.attention=dp(tp=2)", "layers.*.mlp=dp(tp=2)"]),
    ("llama-train-cp_pass_kv", "llama.py", {}, TRAIN, 2, ["layers.*.attention=cp_pass_kv(cp=2)"]),
    ("llama-train-cp_pass_q", "llama.py", {}, TRAIN, 2, ["layers.*.attention=cp_pass_q(cp=2)"]),
    ("mixtral-decode-ep", "mixtral.py", MIXTRAL, DECODE, 2, ["layers.*.moe=ep(tp=2)"]),
    ("mixtral-decode-tp_ep", "mixtral.py", MIXTRAL, DECODE, 4, ["layers.*.moe=tp_ep(kvp=2,tp=2)"]),
    ("mixtral-decode-ep_dispatch", "mixtral.py", MIXTRAL, DECODE, 2,
     ["layers.*.moe=ep_dispatch(tp=2)", "layers.*.attention=dp(tp=2)"]),
    ("mixtral-prefill-ep_dispatch", "mixtral.py", MIXTRAL, PREFILL, 2, ["layers.*.moe=ep_dispatch(tp=2)"]),
    ("mixtral-train-ep", "mixtral.py", MIXTRAL, TRAIN, 2, ["layers.*.moe=ep(tp=2)"]),
    ("mixtral-train-ep_dispatch", "mixtral.py", MIXTRAL, TRAIN, 2, ["layers.*.moe=ep_dispatch(tp=2)"]),
    ("mixtral-train-tp_ep", "mixtral.py", MIXTRAL, TRAIN, 2, ["layers.*.moe=tp_ep(tp=2)"]),
    ("deepseek-decode-helix", "deepseek.py", DEEPSEEK, DECODE, 2, ["layers.*.attention=helix(kvp=2,tpa=1)"]),
    ("deepseek-decode-helix-hopb2", "deepseek.py", DEEPSEEK, DECODE, 4,
     ["layers.*.attention=helix(kvp=4,tpa=1,hopb=2)"]),
    ("deepseek-decode-tp", "deepseek.py", DEEPSEEK, DECODE, 2, ["layers.*.attention=tp(tp=2)"]),
    ("deepseek-train-tp", "deepseek.py", DEEPSEEK, TRAIN, 2, ["layers.*.attention=tp(tp=2)"]),
    ("deepseek-train-ep", "deepseek.py", DEEPSEEK, TRAIN, 2, ["layers.*.moe=ep(tp=2)"]),
    ("deepseek-train-ep_dispatch", "deepseek.py", DEEPSEEK, TRAIN, 2, ["layers.*.moe=ep_dispatch(tp=2)"]),
    ("gpt2-decode-tp", "gpt2.py", {}, DECODE, 2, TP2),
    ("gpt2-prefill-tp_sp", "gpt2.py", {}, PREFILL, 2, SP2),
    ("gpt2-train-tp", "gpt2.py", {}, TRAIN, 2, TP2),
]


def _planned(load, example: str, args: dict, workload: Workload, gpus: int, force: list[str]):
    loaded = load(str(EXAMPLES / example), **args)
    plan = make_plan(loaded, hardware="h100-sxm", gpus=gpus, workload=workload, force=force).plan
    return plan, lower(loaded.graph, plan)


@pytest.mark.parametrize("example, args, workload, gpus, force", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_program_runs_what_the_plan_prices(load, example, args, workload, gpus, force):
    plan, program = _planned(load, example, args, workload, gpus, force)
    forced = {rule.split("=", 1)[1].split("(")[0] for rule in force}
    assert forced <= {b.strategy for b in plan.blocks}, "the plan does not use the forced strategies"
    assert mismatches(plan, program, gradients=True) == []


def test_check_reports_unpriced_and_phantom_collectives(load):
    """A plan that forgets the Helix all-to-all, one that prices a collective no block runs,
    an edge priced as free that the program converts with an all-to-all, and a training plan
    without its gradient all-reduce are each reported."""
    plan, program = _planned(load, "llama.py", {}, DECODE, 4, CASES[0][5])
    assert mismatches(plan, program) == []
    attention = plan.block("layers.0.attention")
    forgot = {k: v for k, v in attention.comm_s.items() if k != "all_to_all:kvp"}
    lines = mismatches(_with_comm(plan, "layers.0.attention", forgot), program)
    assert len(lines) == 1 and "layers.0.attention" in lines[0] and "('all_to_all', 'kvp')" in lines[0]
    lines = mismatches(_with_comm(plan, "layers.0.norm_mlp", {"all_gather:kvp×tp": 1e-6}), program)
    assert len(lines) == 1 and "layers.0.norm_mlp" in lines[0]

    # the edge into a batch-split block after a token-split one: an all-to-all, priced by
    # the pair of layouts; the same program under a plan that says no layout change is reported
    plan, program = _planned(load, "llama.py", {}, PREFILL, 2, SP2)
    assert (plan.block("layers.1.mlp").layout_out, plan.block("final_norm").layout_in) == ("shard_seq", "shard_batch")
    assert mismatches(plan, program) == []
    blocks = [dataclasses.replace(b, layout_in="shard_seq") if b.name == "final_norm" else b for b in plan.blocks]
    lines = mismatches(dataclasses.replace(plan, blocks=blocks), program)
    assert lines == ["edge before final_norm: runs [('all_to_all', 'tp')], priced []"]

    plan, program = _planned(load, "llama.py", {}, TRAIN, 2, TP2)
    assert mismatches(plan, program, gradients=True) == []
    norm = plan.block("final_norm")
    assert norm.comm_s.get("all_reduce:grads_tp", 0) > 0
    untrained = {k: v for k, v in norm.comm_s.items() if k != "all_reduce:grads_tp"}
    lines = mismatches(_with_comm(plan, "final_norm", untrained), program, gradients=True)
    assert len(lines) == 1 and "gradients of 100.0%" in lines[0]


def _with_comm(plan, block: str, comm: dict[str, float]):
    blocks = [dataclasses.replace(b, comm_s=comm) if b.name == block else b for b in plan.blocks]
    return dataclasses.replace(plan, blocks=blocks)


def test_every_communicating_runtime_kernel_is_known():
    """A runtime helper that calls torch.distributed is either a block kernel whose
    collectives the check counts, or one of the known non-kernels; a new communicating
    kernel must be added to the check (else its collectives would go uncounted)."""
    # the runtime and the parts it includes (_runtime_cp.py.jinja: context parallelism)
    text = "\n".join(p.read_text() for p in sorted((ROOT / "codegen" / "templates").glob("_runtime*.py.jinja")))
    chunks = {}
    for chunk in re.split(r"\n(?=def |class )", text):
        name = re.match(r"(?:def|class) (\w+)", chunk)
        if name:
            chunks[name.group(1)] = chunk
    # calls torch.distributed's communication, or a helper that does (to a fixed point)
    communicating = {n for n, c in chunks.items()
                     if re.search(r"\bdist\.(?!get_|is_|new_group|init_|destroy_)\w+\(", c)}
    while True:
        calls = {n for n, c in chunks.items() if any(re.search(rf"\b{m}\b", c) for m in communicating - {n})}
        if calls <= communicating:
            break
        communicating |= calls
    assert {"moe_dispatch", "ring_attention_pass_q", "ring_shift"} <= communicating
    assert communicating <= set(RUNTIME_COLLECTIVES) | RUNTIME_NOT_KERNELS


def _deepseek_v3_ctx(kvp: int) -> PlanContext:
    return PlanContext(
        workload=Workload(kind="decode", batch=4, seq=1, context=4095),
        cost=CostModel(hardware=load_hardware("h100-sxm")), mesh=Mesh.of(kvp=kvp),
    )


def test_mla_helix_prices_the_value_projection_where_the_program_runs_it(load):
    """DeepSeek-V3 latent attention (Q 128, r 512, v 128, H 7168), Helix kvp 8 (TPA 1), B 4,
    one new token, bf16, by hand. `mla_helix_combine` multiplies each of this rank's
    Q/N = 16 heads' latent output [4, 16, 1, 512] by its [128, 512] value half of kv_b_proj:
    2·4·16·512·128 = 8388608 FLOPs, reading 16·128·512·2 = 2 MiB of weights and
    4·16·(512 + 128)·2 = 81920 B of activations. Before the all-to-all the value half is not
    multiplied: the QKV GEMM covers the block's 187107328 parameters less the output
    projection (128·128·7168) and the value half (128·128·512)."""
    block = next(b for b in load(str(EXAMPLES / "deepseek.py"), preset="deepseek-v3").graph.blocks
                 if b.kind == "attention")
    ctx = _deepseek_v3_ctx(8)
    terms = helix_terms(block, ctx)
    assert terms["value_up_flops"] == 8388608
    assert terms["value_up_bytes"] == 2 * 2**20 + 81920
    work = KernelWork(kind="gemm", flops=8388608, nbytes=2 * 2**20 + 81920, dtype="bf16")
    assert terms["value_up_s"] == ctx.cost.kernel(work)
    assert block.param_count == 187107328
    before = 187107328 - 128 * 128 * 7168 - 128 * 128 * 512
    qkv = KernelWork(kind="gemm", flops=2.0 * 4 * before, nbytes=before * 2 + 4 * (7168 + before / 7168) * 2,
                     dtype="bf16")
    post = KernelWork(kind="gemm", flops=2.0 * 4 * 128 * 128 * 7168 / 8,
                      nbytes=128 * 128 * 7168 / 8 * 2 + 4 * (7168 + 128 * 128 / 8) * 2, dtype="bf16")
    attention = sliced_overlap([terms["slice_attention_s"]], [terms["slice_all_to_all_s"]]).compute_s
    priced = price_helix(block, ctx)
    expected = (ctx.cost.kernel(qkv) + attention + terms["combine_s"] + terms["value_up_s"]
                + ctx.cost.kernel(post))
    assert priced.compute_s == pytest.approx(expected, rel=1e-12)
    # the whole kv_b_proj stays in memory on every rank (the program holds it whole)
    assert priced.memory["weights"] == (187107328 - 128 * 128 * 7168 + 128 * 128 * 7168 / 8) * 2
    assert f"value half to this rank's 16 heads, {terms['value_up_s'] * 1e6:.1f} µs" in " ".join(explain_helix(block, ctx, {}))
    # twice the kvp ranks: half the heads per rank, half the value projection; HOP-B slices
    # each read the weights again
    assert helix_terms(block, _deepseek_v3_ctx(16))["value_up_flops"] == 8388608 / 2
    sliced = helix_terms(block, ctx, hopb=2)
    assert sliced["value_up_flops"] == 8388608
    assert sliced["value_up_bytes"] == 2 * (2 * 2**20) + 81920


def test_gqa_helix_has_no_value_projection(load):
    block = next(b for b in load(str(EXAMPLES / "llama.py")).graph.blocks if b.kind == "attention")
    ctx = PlanContext(workload=DECODE, cost=CostModel(hardware=load_hardware("h100-sxm")), mesh=Mesh.of(kvp=2))
    terms = helix_terms(block, ctx)
    assert terms["value_up_flops"] == terms["value_up_s"] == 0.0


def test_training_prices_the_gradient_all_reduce_of_weights_held_whole(load):
    """The training program all-reduces over tp the gradient of every weight several tp ranks
    hold whole. By hand, tp 8, bf16: a Llama-3-8B norm (4096 weights: 8192 B) replicated or
    under tp_sp (tokens split, weight whole; no collective of its own), DeepSeek-V3's latent
    attention under tp (its down-projections and their norms held whole:
    7168·1536 + 1536 + 7168·576 + 512 = 15140864 weights); a tp MLP holds nothing whole."""
    from passes.parallelize.pricing import price
    from passes.parallelize.strategies import BY_NAME

    def ctx() -> PlanContext:
        return PlanContext(workload=Workload(kind="train", batch=8, seq=1024),
                           cost=CostModel(hardware=load_hardware("h100-sxm")), mesh=Mesh.of(tp=8))

    train = ctx()
    llama = load(str(EXAMPLES / "llama.py"), preset="llama3-8b").graph.blocks
    norm = next(b for b in llama if b.kind == "norm")
    assert norm.param_count == 4096
    grads = train.collective_s("all_reduce", 8192, ("tp",))
    assert grads > 0
    for strategy in ("replicate", "tp_sp"):
        priced = price(norm, BY_NAME[strategy], train, zero=0, recompute=0)
        assert priced.comm_s["all_reduce:grads_tp"] == grads
        assert not {k for k in priced.comm_s if k.startswith(("all_gather", "reduce_scatter"))}
        assert priced.memory["weights"] == 8192
    mlp = next(b for b in llama if b.kind == "mlp")
    assert "all_reduce:grads_tp" not in price(mlp, BY_NAME["tp"], train, zero=0, recompute=0).comm_s
    deepseek = load(str(EXAMPLES / "deepseek.py"), preset="deepseek-v3").graph.blocks
    attention = next(b for b in deepseek if b.kind == "attention")
    priced = price(attention, BY_NAME["tp"], train, zero=0, recompute=0)
    assert priced.comm_s["all_reduce:grads_tp"] == train.collective_s("all_reduce", 15140864 * 2, ("tp",))


def test_ep_dispatch_prices_the_counts_and_routing_exchanges(load):
    """`moe_dispatch` exchanges row counts (blocking) and expert ids before the token rows,
    and in inference the routing weights by a third all-to-all. By hand, Mixtral-8x7B
    (H 4096, E 8, k 2), tp 8, decode B 64: each rank's 8 tokens go to 8·(1 − (7/8)²) = 1.875
    ranks, 15 rows sent; counts 8·8 = 64 B, ids 15·2·8 = 240 B, weights 15·2·2 = 60 B (bf16);
    training packs the weights with the rows and sends no counts or ids back."""
    from passes.parallelize.strategies.ep import price_ep_dispatch

    block = next(b for b in load(str(EXAMPLES / "mixtral.py"), preset="mixtral-8x7b").graph.blocks
                 if b.kind == "moe")
    assert (block.dims["hidden"], block.dims["experts"], block.dims["top_k"]) == (4096, 8, 2)
    hw = CostModel(hardware=load_hardware("h100-sxm"))
    decode = PlanContext(workload=Workload(kind="decode", batch=64, seq=1, context=1024), cost=hw, mesh=Mesh.of(tp=8))
    a2a = lambda ctx, nbytes: ctx.collective_s("all_to_all", nbytes, ("tp",))  # noqa: E731
    comm = price_ep_dispatch(block, decode).comm_s
    assert comm == {
        "all_to_all:tp:counts": a2a(decode, 64),
        "all_to_all:tp:routing": a2a(decode, 240) + a2a(decode, 60),
        "all_to_all:tp:dispatch": a2a(decode, 15 * 4096 * 2),
        "all_to_all:tp:combine": a2a(decode, 15 * 4096 * 2),
    }
    train = PlanContext(workload=Workload(kind="train", batch=64, seq=1), cost=hw, mesh=Mesh.of(tp=8))
    comm = price_ep_dispatch(block, train, zero=0, recompute=0).comm_s
    assert comm["all_to_all:tp:counts"] == a2a(train, 64)
    assert comm["all_to_all:tp:routing"] == a2a(train, 240)
    assert comm["all_to_all:tp:dispatch"] == 2 * a2a(train, 15 * 4096 * 2 + 60)
