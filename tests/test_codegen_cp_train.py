"""Context-parallel training: ring attention with its ring backward, checked against the
single-process model (loss within the forward tolerance; every gradient and every updated
weight within 1e-4 of the tensor's largest entry) after each of 3 optimizer steps, and the
planner's price of the CP backward.

The tokens and their next-token labels go into the balanced layout together (labels shifted
over the whole sequence first, so a chunk's last label is the first token of the next chunk
in sequence order, which may live on another rank; padding labelled -100). Lengths are chosen
so that the layout pads (T not a multiple of 2·cp).

Most cases run the ranks as threads (threaded process group). It has no send/recv, so there
the ring's `ring_shift` is replaced by the same transfer written as an all-to-all with one
non-empty piece (`_threaded_ring_shift`); the real isend/irecv path, both rings of the
pass-KV backward in flight at once on their own tags included, runs under torchrun in the two
`helixplan verify` cases.

    ranks  mesh         attention   other blocks                 T   optimizer
    2      cp2          cp_pass_kv  replicate                    7   SGD fp32
    2      cp2          cp_pass_q   replicate                    7   AdamW f64
    4      cp2 × tp2    cp_pass_kv  mlp tp, vocab, attn recomp.  11  AdamW f64
    4      cp2 × tp2    cp_pass_q   mlp tp, vocab                8   SGD fp32
    4      dp2 × cp2    cp_pass_kv  replicate, ZeRO-3            6   AdamW f64
    2/4    torchrun     cp_pass_kv cp2 / cp_pass_q cp2 × tp2      7/10  AdamW f64
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from ir.workload import Workload
from planner.api import make_plan
from planner.verify_runner import run_ranks_threaded, write_run_plan
from tests.conftest import ROOT

LLAMA = str(ROOT / "examples" / "llama.py")
TP_REST = ["layers.*.mlp=tp", "embedding=vocab", "lm_head=vocab"]
F64 = ["--dtype", "float64"]


def _threaded_ring_shift(rt):
    """ring_shift for the threaded process group: the same transfer (this rank's tensor to
    the next cp rank, the previous rank's into a new buffer) as an all-to-all with one
    non-empty piece each way."""
    import torch
    import torch.distributed as dist

    def ring_shift(tensor, pg, tag=0):
        n, index = rt.MESH["cp"], pg.coord["cp"]
        flat = tensor.contiguous().reshape(-1)
        received = torch.empty_like(flat)
        send, recv = [0] * n, [0] * n
        send[(index + 1) % n] = recv[(index - 1) % n] = flat.numel()
        dist.all_to_all_single(received, flat, recv, send, group=pg.cp)
        return received.view_as(tensor), []

    return ring_shift


def cp_train(load, tmp_path, gpus, force, seq, extra=(), *, recompute=frozenset(), plant=None):
    run = make_plan(
        load(LLAMA), hardware="h100-sxm", gpus=gpus,
        workload=Workload(kind="train", batch=4, seq=seq, context=0), force=force,
    )
    plan = run.plan
    if recompute:
        plan = dataclasses.replace(plan, blocks=[
            dataclasses.replace(b, extras={**b.extras, "recompute": int(b.kind in recompute)})
            for b in plan.blocks
        ])
    path = write_run_plan(run.graph, plan, tmp_path)
    if plant:
        text = path.read_text()
        assert text.count(plant[0]) == 1
        path.write_text(text.replace(*plant))
    spec = importlib.util.spec_from_file_location(f"cp_train_{abs(hash(str(path)))}", path)
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)
    rt.ring_shift = _threaded_ring_shift(rt)
    args = rt.parse_args(["--verify", "--backend", "gloo", "--workload", "train", "--batch", "4",
                          "--seq", str(seq), "--steps", "3", *extra])
    results = run_ranks_threaded(gpus, lambda rank: rt.run(args, print_result=False))
    return plan, path, results


def assert_exact(results, *, tol=1e-4):
    r0 = results[0]
    assert r0["ok"] is True, r0
    assert r0["steps_checked"] == 3
    assert r0["grad_rel_err"] <= tol and r0["param_rel_err"] <= tol, r0
    losses = r0["losses"]
    assert len(losses) == 3 and losses[2] < losses[0]
    assert all(r["losses"] == losses for r in results)


@pytest.mark.parametrize("variant", ["cp_pass_kv", "cp_pass_q"])
def test_cp2_trains_exactly(load, tmp_path, variant):
    extra = ["--optimizer", "sgd"] if variant == "cp_pass_kv" else F64
    plan, path, results = cp_train(load, tmp_path, 2, [f"layers.*.attention={variant}(cp=2)"], 7, extra)
    assert plan.mesh["cp"] == 2
    assert {b.strategy for b in plan.blocks if b.kind == "attention"} == {variant}
    assert_exact(results, tol=1e-4 if variant == "cp_pass_kv" else 1e-9)
    kernel = "RingAttentionPassKV" if variant == "cp_pass_kv" else "RingAttentionPassQ"
    assert f"class {kernel}(torch.autograd.Function)" in path.read_text()


def test_cp2_tp2_pass_kv_with_vocab_head_and_recomputed_attention(load, tmp_path):
    plan, path, results = cp_train(
        load, tmp_path, 4, ["layers.*.attention=cp_pass_kv(cp=2,tp=2)", *TP_REST], 11, F64,
        recompute=frozenset({"attention"}),
    )
    assert plan.mesh["cp"] == 2 and plan.mesh["tp"] == 2
    assert_exact(results, tol=1e-9)
    assert all(r["vocab_parallel"] and r["full_vocab_tensors"] == 0 for r in results)
    assert path.read_text().count("(recomputed in backward)") == 2


def test_cp2_tp2_pass_q_sgd(load, tmp_path):
    _, _, results = cp_train(
        load, tmp_path, 4, ["layers.*.attention=cp_pass_q(cp=2,tp=2)", *TP_REST], 8,
        ["--optimizer", "sgd"],
    )
    assert_exact(results)


def test_dp2_cp2_fully_sharded(load, tmp_path):
    plan, _, results = cp_train(
        load, tmp_path, 4, ["layers.*.attention=cp_pass_kv(dp=2,cp=2)"], 6, ["--zero", "3", *F64]
    )
    assert plan.mesh["dp"] == 2 and plan.mesh["cp"] == 2
    assert_exact(results, tol=1e-9)
    assert all(r["zero_levels"] == [3] for r in results)


PLANTS = {
    # the dK/dV accumulator stops travelling with its block: owners get only the last
    # rank's share of their keys' gradient
    "accumulator not carried": ("d_block += ring_arrived(carried)", "ring_arrived(carried)"),
    # labels balanced with token 0 in the padding instead of -100: padded rows enter the loss
    "padding labelled": ("cp_balance(labels, 1, fill=-100)", "cp_balance(labels, 1)"),
}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_planted_ring_backward_and_label_bugs_are_caught(load, tmp_path, plant):
    _, _, results = cp_train(
        load, tmp_path, 2, ["layers.*.attention=cp_pass_kv(cp=2)"], 7, ["--optimizer", "sgd"],
        plant=PLANTS[plant],
    )
    assert results[0]["ok"] is False
    assert results[0]["grad_rel_err"] > 1e-3


# -- under torchrun, through `helixplan verify` ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("nproc", "force", "seq"), [
    (2, ["layers.*.attention=cp_pass_kv(cp=2)"], 7),
    (4, ["layers.*.attention=cp_pass_q(cp=2,tp=2)", "lm_head=vocab"], 10),
], ids=["kv-cp2", "q-cp2xtp2"])
def test_verify_cli_trains_cp_under_torchrun(tmp_path, nproc, force, seq):
    from tests.test_codegen_torchrun import verify

    forces = [arg for f in force for arg in ("--force", f)]
    code, out, log = verify(
        LLAMA, "--nproc", str(nproc), "--workload", "train", "--batch", "4", "--seq", str(seq),
        *forces, "--out", str(tmp_path),
    )
    assert code == 0, log
    assert out["ok"] is True and out["nproc"] == nproc


# -- the planner ------------------------------------------------------------------------


def test_long_context_train_plan_prices_the_ring_backward():
    """Llama-3-8B, one 128K-token sequence, 16 H100s: the planner trains with cp4 × tp4 and
    pass-KV. Per ring step a rank's K/V block is B·(T/cp)·(K/tp)·(d_k + d_v) = 32768·2·256
    bf16 elements = 32 MiB, its float32 dK/dV accumulator 64 MiB; cp rings are four ranks four
    apart on 8-GPU nodes, so the slowest hop crosses nodes (InfiniBand: 6 µs + bytes /
    (50 GB/s · 0.9)). Forward: 3 K/V sends. Backward: 3 K/V sends + 4 accumulator sends
    (the last one brings each accumulator home). Compute: forward + 2× forward, plus 10% of
    the overlapped gradient all-reduce over cp."""
    from cost_models import CostModel
    from cost_models.hardware import load_hardware
    from ir.mesh import Mesh
    from passes.parallelize.context import PlanContext
    from passes.parallelize.strategies.cp import price_cp
    from tests.conftest import loaded

    workload = Workload(kind="train", batch=1, seq=128 * 1024, context=0)
    run = make_plan(loaded(LLAMA, preset="llama3-8b"), hardware="h100-sxm", gpus=16, workload=workload)
    assert (run.plan.mesh["cp"], run.plan.mesh["tp"]) == (4, 4)
    attention = next(b for b in run.plan.blocks if b.kind == "attention")
    assert attention.strategy == "cp_pass_kv"
    assert run.plan.predicted["notes"]["attention.0"][-1].startswith("backward ring: attention backward")

    def ib_send(nbytes):
        return 6e-6 + nbytes / (50e9 * 0.9)

    kv, grads = 32768 * 2 * 256 * 2, 32768 * 2 * 256 * 4
    assert kv == 32 * 2**20 and grads == 64 * 2**20
    assert attention.comm_s["send_recv:cp"] == pytest.approx(3 * ib_send(kv), rel=1e-9)
    assert attention.comm_s["send_recv:cp_backward"] == pytest.approx(
        3 * (ib_send(kv) + ib_send(grads)) + ib_send(grads), rel=1e-9
    )
    # every other block's weights are replicated over cp: their gradients are all-reduced there
    for b in run.plan.blocks:
        if b.kind in ("mlp", "norm", "lm_head"):
            assert b.comm_s.get("all_reduce:grads_cp", 0) > 0, b

    block = next(b for b in run.graph.blocks if b.name == attention.name)
    ctx = PlanContext(workload=dataclasses.replace(workload, kind="prefill"),
                      cost=CostModel(hardware=load_hardware("h100-sxm")), mesh=Mesh.of(cp=4, tp=4))
    forward = price_cp(block, ctx, variant="cp_pass_kv").compute_s
    overlapped = attention.comm_s["all_reduce:grads_cp"]
    assert attention.compute_s == pytest.approx(3 * forward + 0.1 * overlapped, rel=1e-9)
