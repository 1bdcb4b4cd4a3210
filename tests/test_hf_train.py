"""Training of Hugging Face models (`hf:config.json`): the generated program trains the
transformers model — forward through transformers' own modules as traced, the loss on
next-token labels computed by the program from the logits (vocabulary-split where the head
is), backward through the differentiable collectives, gradient reduction at the plan's ZeRO
level, AdamW — and after each of 3 steps the loss, every gradient and every updated weight
match the transformers model trained in one process (float64, 1e-9 of each tensor's
largest entry; the default tolerance of `verify` is 1e-4).

Mixtral and DeepSeek-V3 train their MoE blocks under EP (the expert kernels the grouped-mm
experts are lowered to); the float64 reference runs transformers' per-expert loop instead of
grouped_mm, which takes no float64.

Two things transformers' forward needs for this, both in planner/hf_model.py and the
training template: rotary `inv_freq` is a module buffer the program reads but never trains,
and the float64 reference keeps transformers' float32 upcasts (norms, rotary) in float64 —
without that the reference's activations are rounded to float32 and AdamW turns the
difference into a 1e-3 weight error."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from ir.workload import Workload  # noqa: E402
from planner.api import make_plan  # noqa: E402
from planner.cli import main  # noqa: E402
from planner.verify_runner import program_args, run_threaded, write_run_plan  # noqa: E402
from tests.conftest import HF_CONFIGS  # noqa: E402
from tests.test_hf_models import _config_file  # noqa: E402

TP2 = ["layers.*.attention=tp(tp=2)", "layers.*.mlp=tp(tp=2)", "lm_head=vocab(tp=2)"]
# GPT-2 ties the LM head to the token embedding: both split by vocabulary, one weight.
GPT2_TP2 = ["embedding=vocab(tp=2)", *TP2]

# MoE: transformers' grouped-mm experts lowered to the expert kernels, trained under EP; the
# float64 reference runs transformers' per-expert loop (grouped_mm takes no float64).
def _moe(strategy: str, tp: int) -> list[str]:
    return [f"layers.*.moe={strategy}(tp={tp})", f"layers.*.attention=tp(tp={tp})", f"lm_head=vocab(tp={tp})"]


CASES = [
    # (config, gpus, force, ZeRO levels offered, mesh wanted)
    ("llama_tiny", 2, TP2, (0,), {"tp": 2}),
    ("gpt2_tiny", 2, GPT2_TP2, (0,), {"tp": 2}),
    ("llama_tiny", 4, TP2, (3,), {"dp": 2, "tp": 2}),
    ("gpt2_tiny", 4, GPT2_TP2, (2,), {"dp": 2, "tp": 2}),
    ("mixtral_tiny", 2, _moe("ep", 2), (0,), {"tp": 2}),
    ("deepseek_v3_tiny", 2, _moe("ep_dispatch", 2), (0,), {"tp": 2}),
    ("mixtral_tiny", 4, _moe("tp_ep", 2), (3,), {"dp": 2, "tp": 2}),
]


# tiny Mixtral's vocabulary (512) equals its experts' gate|up width (2 × 256), and the program's
# census counts any tensor ending in a vocabulary-sized dim as full-vocabulary logits.
CONFIG_CHANGES = {"mixtral_tiny": {"vocab_size": 384}}


def _config(tmp_path, name) -> str:
    return _config_file(tmp_path, name, **CONFIG_CHANGES.get(name, {}))


def _train(load, tmp_path, name, gpus, force, zero, mesh):
    loaded = load(f"hf:{_config(tmp_path, name)}")
    workload = Workload(kind="train", batch=4, seq=8, context=0, zero_levels=zero)
    run = make_plan(loaded, hardware="h100-sxm", gpus=gpus, workload=workload, force=force)
    assert {k: v for k, v in run.plan.mesh.items() if v > 1} == mesh
    program = write_run_plan(loaded.graph, run.plan, tmp_path)
    argv = program_args(workload="train", batch=4, seq=8, context=0, steps=3)
    return program, run_threaded(program, gpus, argv)


@pytest.mark.parametrize("name, gpus, force, zero, mesh", CASES,
                         ids=[f"{n.removesuffix('_tiny')}-{g}-zero{z[0]}" for n, g, _, z, _ in CASES])
def test_hf_model_trains_exactly(load, tmp_path, name, gpus, force, zero, mesh):
    program, results = _train(load, tmp_path, name, gpus, force, zero, mesh)
    r0 = results[0]
    assert r0["ok"] is True and r0["steps_checked"] == 3, r0
    assert r0["grad_rel_err"] <= 1e-9 and r0["param_rel_err"] <= 1e-9, r0
    losses = r0["losses"]
    assert losses[2] < losses[0] and all(r["losses"] == losses for r in results)  # it learns, all agree
    assert all(r["zero_levels"] == list(zero) for r in results)
    if "tp" in mesh:  # the loss is completed from per-rank statistics: no full-vocabulary logits
        assert r0["vocab_parallel"] and r0["full_vocab_tensors"] == 0
        assert "lm_head_0_vocab" in program.read_text()
    if zero == (3,):  # each rank stores its half of every trained weight of its tp shard
        assert r0["param_bytes"] < 0.6 * _single_rank_bytes(load, _config(tmp_path, name)) / mesh["tp"]


def _single_rank_bytes(load, config: str) -> int:
    """float64 bytes of the model's trained weights (parameters, not buffers)."""
    graph = load(f"hf:{config}").graph
    return 8 * sum(p.numel for p in graph.params.values() if p.counts)


@pytest.mark.slow
def test_verify_trains_an_hf_model_under_torchrun(tmp_path, capsys):
    """`helixplan verify hf:... --workload train` end to end: planned, written with its
    hf_model.py and config.json, launched under torchrun on 2 gloo ranks."""
    forced = [a for f in GPT2_TP2 for a in ("--force", f)]
    code = main(["verify", f"hf:{HF_CONFIGS / 'gpt2_tiny.json'}", "--nproc", "2", "--workload", "train",
                 "--batch", "2", "--seq", "8", "--out", str(tmp_path / "plan"), *forced])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert json.loads(out.out.strip().splitlines()[-1])["ok"]
