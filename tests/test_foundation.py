"""Capture + recognition: block kinds, counts and dims match the configs that built them."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter

import pytest
import torch

from ir.tensor import B, L, T, evaluate
from tests.conftest import EXAMPLES, FIXTURES, HF_CONFIGS, ROOT


def _cfg(obj) -> dict:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return obj.to_dict()


def expected(cfg: dict) -> dict:
    """Block counts and dims implied by a config (HF names; GPT-2's own names too)."""
    hidden = cfg.get("hidden_size") or cfg["n_embd"]
    layers = cfg.get("num_hidden_layers") or cfg["n_layer"]
    heads = cfg.get("num_attention_heads") or cfg["n_head"]
    kv = cfg.get("num_key_value_heads") or heads
    ffn = cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden
    experts = cfg.get("num_local_experts") or cfg.get("n_routed_experts") or 0
    dense_first = cfg.get("first_k_dense_replace", 0 if experts else layers)
    moe_layers = layers - dense_first if experts else 0
    out = {
        "hidden": hidden,
        "vocab": cfg["vocab_size"],
        "counts": {
            "attention": layers,
            "mlp": layers - moe_layers,
            "moe": moe_layers,
            "norm": 2 * layers + 1,
            "embedding": 1,
            "lm_head": 1,
        },
    }
    if cfg.get("kv_lora_rank"):
        out["attention"] = {
            "hidden": hidden,
            "q_heads": heads,
            "head_dim": cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"],
            "kv_lora_rank": cfg["kv_lora_rank"],
            "q_lora_rank": cfg.get("q_lora_rank") or 0,
            "qk_rope_head_dim": cfg["qk_rope_head_dim"],
            "v_head_dim": cfg["v_head_dim"],
        }
    else:
        head_dim = cfg.get("head_dim") or hidden // heads
        out["attention"] = {"hidden": hidden, "q_heads": heads, "head_dim": head_dim, "kv_heads": kv}
    out["mlp"] = {"hidden": hidden, "ffn": ffn}
    if experts:
        out["moe"] = {
            "hidden": hidden,
            "experts": experts,
            "top_k": cfg["num_experts_per_tok"],
            "ffn": cfg.get("moe_intermediate_size") or ffn,
            "shared_experts": cfg.get("n_shared_experts") or 0,
        }
    return out


def check_report(report: dict, cfg: dict, param_total: int) -> None:
    exp = expected(cfg)
    kinds = Counter(b["kind"] for b in report["blocks"])
    for kind, n in exp["counts"].items():
        assert kinds.get(kind, 0) == n, (kind, kinds)
    assert set(kinds) <= {"embedding", "attention", "mlp", "moe", "norm", "lm_head", "other"}
    for b in report["blocks"]:
        if b["kind"] in ("attention", "mlp", "moe"):
            assert b["dims"] == exp[b["kind"]], (b["name"], b["dims"], exp[b["kind"]])
            assert b["name"] == f"layers.{b['layer']}.{b['kind']}"
        if b["kind"] in ("embedding", "lm_head"):
            assert b["dims"] == {"vocab": exp["vocab"], "hidden": exp["hidden"]}
    names = {b["name"] for b in report["blocks"]}
    assert {"embedding", "final_norm", "lm_head", "layers.0.norm_attn", "layers.0.norm_mlp"} <= names
    assert report["params"] == param_total
    assert sum(b["params"] for b in report["blocks"]) == param_total


def _report(load, spec: str, **model_args: str) -> dict:
    from planner.commands.inspect import inspect_report

    return inspect_report(load(spec, **model_args).graph, batch=2, seq=3, context=5)


@pytest.mark.parametrize("name", ["llama", "gpt2", "mixtral", "deepseek"])
def test_examples_tiny(load, name):
    from planner.model_source import build_model, resolve_source

    spec = str(EXAMPLES / f"{name}.py")
    model = build_model(resolve_source(spec))
    total = sum(p.numel() for p in model.parameters())
    check_report(_report(load, spec), _cfg(model.config), total)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,preset", [("llama", "llama3-8b"), ("deepseek", "deepseek-v3"), ("mixtral", "mixtral-8x7b")]
)
def test_examples_full_size(load, name, preset):
    from planner.model_source import build_model, resolve_source

    spec = str(EXAMPLES / f"{name}.py")
    model = build_model(resolve_source(spec, {"preset": preset}))
    total = sum(p.numel() for p in model.parameters())
    report = _report(load, spec, preset=preset)
    check_report(report, _cfg(model.config), total)
    if preset == "llama3-8b":
        assert report["params"] == 8_030_261_248


HF_TINY = ["llama_tiny", "mistral_tiny", "mixtral_tiny", "deepseek_v3_tiny", "gpt2_tiny"]
HF_FULL = ["llama3_8b", "mixtral_8x7b", "gpt2", "deepseek_v3"]


@pytest.mark.parametrize("name", HF_TINY + [pytest.param(n, marks=pytest.mark.slow) for n in HF_FULL])
def test_hf_configs(load, name):
    from planner.model_source import build_model, resolve_source

    spec = f"hf:{HF_CONFIGS / (name + '.json')}"
    model = build_model(resolve_source(spec))
    total = sum(p.numel() for p in model.parameters())
    cfg = json.loads((HF_CONFIGS / f"{name}.json").read_text())
    check_report(_report(load, spec), cfg, total)


def test_shapes_are_symbolic(load):
    g = load(str(EXAMPLES / "llama.py")).graph
    assert g.values["input_ids"].shape == (B, T)
    k_cache = g.values["past_kv_0_0"].shape
    assert k_cache[0] == B and k_cache[2] == L
    free = set().union(*(d.free_symbols for v in g.values.values() for d in v.shape))
    assert free == {"B", "T", "L"}
    paths = {o.module_path for o in g.ops}
    assert "model.layers.1.self_attn.q_proj" in paths


def test_attention_flops_match_hand_computation(load):
    """Llama tiny: hidden 128, 4 q heads, 2 kv heads, head_dim 32.

    Projections: 2·B·T·128·(128 + 64 + 64 + 128) = 98304·B·T. Attention over S = L + T keys:
    2·B·4·T·S·(32 + 32) = 512·B·T·(L + T). Elementwise work (RoPE, mask, cache concat) adds
    lower-order terms; the matmul part is checked exactly and the rest bounded."""
    g = load(str(EXAMPLES / "llama.py")).graph
    attn = g.block("layers.0.attention")
    for b, t, ctx in [(2, 3, 5), (8, 1, 4096)]:
        matmuls = 98304 * b * t + 512 * b * t * (ctx + t)
        got = evaluate(attn.flops, B=b, T=t, L=ctx)
        assert matmuls <= got <= matmuls * 1.02 + 2000 * b * t, (b, t, ctx, got, matmuls)
    # The L coefficient is exactly the attention's 512·B·T per cached token: the cache
    # concat and the GQA head repeat are copies, priced at zero FLOPs.
    assert attn.flops - attn.flops.subs({"L": 0}) == 512 * B * T * L


def test_hf_attention_attends_over_cache(load):
    """hf: models are traced without a cache; attention FLOPs still grow with L."""
    g = load(f"hf:{HF_CONFIGS / 'llama_tiny.json'}").graph
    attn = g.block("layers.0.attention")
    cfg = json.loads((HF_CONFIGS / "llama_tiny.json").read_text())
    heads, hd = cfg["num_attention_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]
    per_cached_token = 2 * heads * hd * 2  # scores + values, per (batch, query)
    d = evaluate(attn.flops, B=1, T=1, L=1001) - evaluate(attn.flops, B=1, T=1, L=1)
    assert d == per_cached_token * 1000


def test_blocks_cover_every_op_once(load):
    g = load(str(EXAMPLES / "deepseek.py")).graph
    covered = [o for b in g.blocks for o in b.ops]
    assert sorted(covered) == sorted(o.name for o in g.ops)


def test_repeated_layers_share_groups(load):
    g = load(str(EXAMPLES / "deepseek.py")).graph
    groups = {b.name: b.group for b in g.blocks}
    assert groups["layers.1.moe"] == groups["layers.2.moe"]
    assert groups["layers.1.attention"] == groups["layers.0.attention"]
    assert groups["layers.0.mlp"] != groups["layers.1.moe"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "planner", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_cli_inspect_json_and_table():
    r = _cli("inspect", str(EXAMPLES / "gpt2.py"), "--json", "--batch", "4", "--context", "1k")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["at"] == {"B": 4, "T": 1, "L": 1024}
    lm = [b for b in report["blocks"] if b["kind"] == "lm_head"][0]
    assert lm["params"] == 0  # tied to the embedding, counted there once
    r = _cli("inspect", str(EXAMPLES / "gpt2.py"))
    assert r.returncode == 0 and "attention.0" in r.stdout


def test_unexportable_model_is_a_clear_error():
    r = _cli("inspect", str(FIXTURES / "bad_control_flow.py"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "data-dependent" in r.stderr and "torch.where" in r.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (("inspect", "nope.py"), "does not exist"),
        (("inspect", str(FIXTURES / "no_build.py")), "build_model"),
        (("inspect", str(EXAMPLES / "llama.py"), "--model-arg", "preset=llama9"), "preset"),
        (("inspect", str(EXAMPLES / "llama.py"), "--model-arg", "oops"), "KEY=VALUE"),
        (("inspect", str(EXAMPLES / "llama.py"), "--context", "12q"), "token count"),
    ],
)
def test_bad_input_exit_2(args, needle):
    r = _cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 8


def test_model_builds_on_meta_without_memory():
    from planner.model_source import build_model, resolve_source

    m = build_model(resolve_source(str(EXAMPLES / "llama.py"), {"preset": "llama3.1-405b"}))
    assert all(p.device.type == "meta" for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) > 400e9
    assert torch.empty(0).device.type == "cpu"
