"""Decode of Hugging Face MoE and latent-attention models (`hf:` Mixtral, DeepSeek-V3).

Every hf: model follows the model file contract with a KV cache. Mixtral caches per-head
K/V like Llama; transformers' DeepSeek-V3 caches its latent after the norm and the roped
shared key as one KV head each (`[B, 1, L, kv_lora_rank]`, `[B, 1, L, rope]`) and expands
per-head K/V from them every step — helixplan caches exactly that (not the absorbed form of
examples/deepseek.py), replicated under `tp` (heads split, the latent shared by all heads).

Checked here: the model file's decode equals transformers decoding with its own cache
(uneven cache lengths included); the generated program's teacher-forced decode steps equal
the model file's on 2 and 4 ranks, with the MoE blocks lowered to the expert kernels
(`ep`, `ep_dispatch`, `tp_ep`) beside `tp`/`dp` attention and, for Mixtral, Helix; Helix for
transformers' latent form is refused with a clear reason (exit 2)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from planner.cli import main  # noqa: E402
from planner.hf_model import kv_cache_shapes, load_config  # noqa: E402
from tests.conftest import HF_CONFIGS  # noqa: E402
from tests.test_hf_models import decoding_matches_transformers  # noqa: E402


@pytest.mark.parametrize("name", ["mixtral_tiny", "deepseek_v3_tiny"], ids=["mixtral", "deepseek-v3"])
def test_decode_over_a_passed_cache_matches_transformers_own_cache(name):
    """A prompt of 5 then 3 single-token steps, each given the cache the model returned so
    far, against transformers decoding with its own cache, masks and positions; then a step
    with uneven cache lengths (sequence 1 one slot short, the slot holding garbage) gives
    sequence 1 the logits of that sequence run alone."""
    config = load_config(HF_CONFIGS / f"{name}.json")
    ours, ids, want, cache = decoding_matches_transformers(config, length=8)
    assert [tuple(t.shape) for t in cache[0]] == list(kv_cache_shapes(config, 2, ids.shape[1]))
    with torch.no_grad():
        lens = torch.tensor([7, 6])
        padded = tuple(tuple(c[:, :, :7].clone() for c in layer) for layer in cache)
        for layer in padded:
            for c in layer:
                c[1, :, 6] = 3.0
        logits, _ = ours(ids[:, 7:8], position_ids=lens[:, None].clone(), past_kv=padded, cache_lens=lens)
        alone, _ = ours(torch.cat([ids[1:, :6], ids[1:, 7:8]], 1))
    torch.testing.assert_close(logits[1, 0], alone[0, -1], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[0, 0], want[-1][0, 0], rtol=0, atol=1e-5)


CASES = [
    ("mixtral_tiny", 2, ["layers.*.attention=tp(tp=2)", "layers.*.moe=ep(tp=2)"], "attention_0_tp", "moe_experts("),
    ("mixtral_tiny", 4, ["layers.*.attention=helix(kvp=2,tpa=2)", "layers.*.moe=tp_ep(kvp=2,tp=2)"],
     "attention_0_helix", "moe_experts("),
    ("mixtral_tiny", 4, ["layers.*.moe=ep_dispatch(tp=4)"], None, "moe_dispatch("),
    ("deepseek_v3_tiny", 2, ["layers.*.attention=tp(tp=2)", "layers.*.mlp=tp(tp=2)", "layers.*.moe=tp_ep(tp=2)",
                             "lm_head=vocab(tp=2)"], "attention_0_tp", "moe_experts("),
    ("deepseek_v3_tiny", 2, ["layers.*.attention=dp(tp=2)", "layers.*.mlp=dp(tp=2)",
                             "layers.*.moe=ep_dispatch(tp=2)"], "attention_0_dp", "moe_dispatch("),
    ("deepseek_v3_tiny", 4, ["layers.*.attention=tp(tp=4)", "layers.*.moe=ep(tp=4)"], "attention_0_tp", "moe_experts("),
]


@pytest.mark.parametrize("name, nproc, force, attention, kernel", CASES,
                         ids=[f"{n.removesuffix('_tiny')}-{f[-1].split('=')[1].split('(')[0]}-{p}"
                              + ("-helix" if "helix" in f[0] else "") for n, p, f, _, _ in CASES])
def test_verify_hf_moe_decode_sharded_matches_the_model(tmp_path, capsys, name, nproc, force, attention, kernel):
    """Teacher-forced decode steps (prompt of 5 prefilled in the plan's layouts, then 4
    single tokens) of the generated program against the model file's reference, which
    decodes as transformers does (test above); threaded ranks."""
    forced = [a for f in force for a in ("--force", f)]
    code = main(["verify", f"hf:{HF_CONFIGS / (name + '.json')}", "--nproc", str(nproc), "--workload", "decode",
                 "--batch", "4", "--context", "5", "--steps", "4", "--in-process", "--out", str(tmp_path / "plan"),
                 *forced])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["ok"] and summary["nproc"] == nproc
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["workload"]["kind"] == "decode"
    program = (tmp_path / "plan" / "run_plan.py").read_text()
    if attention:
        assert f"def {attention}(" in program
    assert kernel in program.split("def moe_0_", 1)[1] and "grouped_mm" not in program
    for f in force:
        kind, strategy = f.split("=")[0].split(".")[-1], f.split("=")[1].split("(")[0]
        assert {b["strategy"] for b in plan["blocks"] if b["kind"] == kind} == {strategy}


def test_hf_latent_cache_is_replicated_under_tp(tmp_path, capsys):
    """transformers' DeepSeek-V3 caches one latent "head" shared by all query heads: under
    tp each rank keeps the whole latent and roped key (not a split of them) and its own
    heads' slice of kv_b_proj."""
    code = main(["plan", f"hf:{HF_CONFIGS / 'deepseek_v3_tiny.json'}", "--gpus", "2", "--workload", "decode",
                 "--batch", "4", "--context", "64", "--out", str(tmp_path), "--force", "layers.*.attention=tp(tp=2)"])
    assert code == 0, capsys.readouterr().err
    program = (tmp_path / "run_plan.py").read_text()
    body = program.split("def attention_0_tp(", 1)[1].split("\ndef ", 1)[0]
    assert "past_key: [B, 1, L, 32] tp=Replicate" in body and "past_value: [B, 1, L, 8] tp=Replicate" in body
    assert 'w["kv_b_proj.weight"]' in body
    assert ("'fqn': 'model.layers.0.self_attn.kv_b_proj.weight', 'aliases': [], 'shape': [128, 32], "
            "'shards': [('tp', 0)], 'local_shape': [64, 32]") in program


def test_helix_on_transformers_latent_attention_is_refused_clearly(capsys):
    """Helix is lowered for the absorbed MLA form of the model files; transformers' form
    (latent cached as one KV head, expanded per head every step) is refused with the reason,
    exit 2, no traceback."""
    code = main(["verify", f"hf:{HF_CONFIGS / 'deepseek_v3_tiny.json'}", "--nproc", "2", "--workload", "decode",
                 "--in-process", "--force", "layers.*.attention=helix(kvp=2)"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "one KV head" in err and "absorbed form" in err


@pytest.mark.slow
def test_hf_moe_decode_under_torchrun_matches_the_model(tmp_path, capsys):
    """The plan directory of a Mixtral decode plan runs standalone under torchrun on 2 gloo
    ranks (hf_model.py + config.json beside run_plan.py) and matches the model every step."""
    code = main(["verify", f"hf:{HF_CONFIGS / 'mixtral_tiny.json'}", "--nproc", "2", "--workload", "decode",
                 "--batch", "2", "--context", "5", "--steps", "3", "--out", str(tmp_path / "plan"),
                 "--force", "layers.*.attention=tp(tp=2)", "--force", "layers.*.moe=ep(tp=2)"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert json.loads(out.out.strip().splitlines()[-1])["ok"]


def test_transformers_latent_attention_is_priced_with_its_per_step_expansion(load):
    """transformers' DeepSeek-V3 attention expands the whole cached latent to per-head K/V
    on every step (kv_b_proj over L + T tokens), work the absorbed form of the model file
    (same dims) does not do: at long context it costs several times more, grows with L, and
    splitting the heads over tp halves the expansion."""
    from cost_models import CostModel, load_hardware
    from ir.mesh import Mesh
    from ir.workload import Workload
    from passes.parallelize.context import PlanContext
    from passes.parallelize.pricing import price
    from passes.parallelize.strategies import REPLICATE_STRATEGY, TP
    from tests.conftest import ROOT

    hf = next(b for b in load(f"hf:{HF_CONFIGS / 'deepseek_v3_tiny.json'}").graph.blocks if b.kind == "attention")
    absorbed = next(b for b in load(str(ROOT / "examples" / "deepseek.py")).graph.blocks if b.kind == "attention")
    assert hf.dims == absorbed.dims
    assert hf.traits.get("latent_one_head") == 1 and not absorbed.traits.get("latent_one_head")

    def seconds(block, context, tp):
        wl = Workload(kind="decode", batch=64, seq=1, context=context)
        ctx = PlanContext(workload=wl, cost=CostModel(hardware=load_hardware("h100-sxm")), mesh=Mesh.of(tp=tp))
        return price(block, TP if tp > 1 else REPLICATE_STRATEGY, ctx).compute_s

    assert seconds(hf, 131072, 1) > 4 * seconds(absorbed, 131072, 1)
    assert 1.8 < seconds(hf, 131072, 1) / seconds(hf, 65536, 1) < 2.2
    assert 0.45 < seconds(hf, 131072, 2) / seconds(hf, 131072, 1) < 0.6
