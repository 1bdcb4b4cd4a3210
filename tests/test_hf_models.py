"""Hugging Face causal LMs as first-class inputs (`hf:config.json`).

The generated program's model file for an hf: model (planner/hf_model.py) must give the
transformers model's own logits, for a prefill and for decode steps over a KV cache passed
in as tensors (against transformers decoding with its own cache); `verify` must match it on
2 and 4 ranks, prefill and decode, with the attention and MLP split (tp), the head split by
vocabulary and the cache split over kvp (Helix); a block the recognizer does not know is
planned replicated with a warning naming it."""

from __future__ import annotations

import json
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

from planner.cli import main  # noqa: E402
from planner.hf_model import HFCausalLM, load_config  # noqa: E402
from tests.conftest import HF_CONFIGS  # noqa: E402

FORCE = ["--force", "layers.*.attention=tp(tp=2)", "--force", "layers.*.mlp=tp(tp=2)",
         "--force", "lm_head=vocab(tp=2)"]


def _config_file(tmp_path, name: str, **changes) -> str:
    raw = json.loads((HF_CONFIGS / f"{name}.json").read_text())
    raw.update(changes)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return str(path)


def decoding_matches_transformers(config, *, length: int, prompt: int = 5):
    """A seeded tiny model of `config` decodes 2 random sequences of `length` tokens (a
    prompt, then one token a step) through the model file contract and through transformers'
    own cache: every step's logits agree. Returns (our module, the ids, transformers' logits
    per call, our final cache) for the checks a test adds."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    ours = HFCausalLM(model)
    ids = torch.randint(0, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(1))
    want = transformers_decoding(model, ids, prompt)
    got, cache = model_file_decoding(ours, ids, prompt)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5, msg=f"step {step}")
    return ours, ids, want, cache


@pytest.mark.parametrize(
    "name, changes",
    [("llama_tiny", {}), ("mistral_tiny", {"sliding_window": 3}), ("gpt2_tiny", {}),
     ("mixtral_tiny", {}), ("deepseek_v3_tiny", {}), ("qwen2_tiny", {}), ("qwen3_tiny", {}),
     ("gemma_tiny", {}), ("gemma2_tiny", {"sliding_window": 3}), ("phi3_tiny", {}),
     ("gpt_neox_tiny", {}), ("qwen2_moe_tiny", {}), ("qwen3_moe_tiny", {})],
    ids=["llama", "mistral-window3", "gpt2", "mixtral", "deepseek-v3", "qwen2", "qwen3", "gemma",
         "gemma2-window3", "phi3", "gpt-neox", "qwen2-moe", "qwen3-moe"],
)
def test_model_file_gives_the_transformers_models_own_logits(tmp_path, name, changes):
    """The explicit causal (sliding-window) mask helixplan hands transformers changes
    nothing: same logits as the model computing its own mask. The window of 3 is shorter
    than the 8 tokens, so a mask without it would differ."""
    config = load_config(_config_file(tmp_path, name, **changes))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got, _ = HFCausalLM(model)(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    if changes:
        config_full = load_config(_config_file(tmp_path, name))
        full = transformers.AutoModelForCausalLM.from_config(config_full).eval()
        full.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert (full(input_ids=ids).logits - want).abs().max() > 1e-3
    # Parameter names are transformers' own, so its checkpoints load as they are.
    assert set(HFCausalLM(model).state_dict()) == set(model.state_dict())


@pytest.mark.parametrize(
    "name, nproc",
    [("llama_tiny", 2), ("mistral_tiny", 2), ("gpt2_tiny", 2), ("llama_tiny", 4), ("gpt2_tiny", 4)],
)
def test_verify_hf_model_sharded_matches_the_model(tmp_path, capsys, name, nproc):
    spec = f"hf:{_config_file(tmp_path, name, sliding_window=5) if name == 'mistral_tiny' else HF_CONFIGS / (name + '.json')}"
    code = main(["verify", spec, "--nproc", str(nproc), "--workload", "prefill", "--batch", str(nproc),
                 "--seq", "8", "--in-process", "--out", str(tmp_path / "plan"), *FORCE])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["ok"] and summary["nproc"] == nproc
    program = (tmp_path / "plan" / "run_plan.py").read_text()
    assert "attention_0_tp" in program and "lm_head_0_vocab" in program
    assert (tmp_path / "plan" / "hf_model.py").is_file() and (tmp_path / "plan" / "config.json").is_file()


# transformers' MoE (topk -> sort -> row gathers -> grouped mm -> weighted sum) lowered to the
# expert kernels; DeepSeek-V3 also routes group-limited (sigmoid + bias, top groups first) and
# attends through MLA, whose keys transformers fills slice by slice (canonicalized to a cat).
MOE_CASES = [
    ("mixtral_tiny", 2, ["layers.*.moe=ep(tp=2)"], "ep", "moe_experts("),
    ("mixtral_tiny", 4, ["layers.*.moe=ep_dispatch(tp=4)"], "ep_dispatch", "moe_dispatch("),
    ("mixtral_tiny", 4, ["layers.*.moe=tp_ep(tp=4)"], "tp_ep", "moe_experts("),
    ("deepseek_v3_tiny", 2, ["layers.*.moe=replicate", "layers.*.attention=tp(tp=2)"], "replicate", "moe_experts("),
    ("deepseek_v3_tiny", 4, ["layers.*.moe=ep(tp=4)", "layers.*.attention=tp(tp=4)"], "ep", "moe_experts("),
    # attention data parallel + EP: latent attention, dense MLP and MoE router on split batches
    ("deepseek_v3_tiny", 2, ["layers.*.moe=ep_dispatch(tp=2)", "layers.*.attention=dp(tp=2)",
                             "layers.*.mlp=dp(tp=2)"], "ep_dispatch", "moe_dispatch("),
    ("deepseek_v3_tiny", 2, ["layers.*.moe=tp_ep(tp=2)", "layers.*.attention=tp(tp=2)",
                             "layers.*.mlp=tp(tp=2)", "lm_head=vocab(tp=2)"], "tp_ep", "moe_experts("),
]


@pytest.mark.parametrize(
    "name, nproc, force, strategy, kernel", MOE_CASES,
    ids=[f"{n.removesuffix('_tiny')}-{s}-{p}" for n, p, _, s, _ in MOE_CASES],
)
def test_verify_hf_moe_model_sharded_matches_the_model(tmp_path, capsys, name, nproc, force, strategy, kernel):
    """The MoE block runs the expert kernel (only each token's top-k experts, split over the
    ranks as the strategy says), not transformers' grouped mm, and the program's logits match
    the transformers model's own (threaded ranks)."""
    forced = [a for f in force for a in ("--force", f)]
    code = main(["verify", f"hf:{HF_CONFIGS / (name + '.json')}", "--nproc", str(nproc), "--batch",
                 str(nproc), "--seq", "8", "--in-process", "--out", str(tmp_path / "plan"), *forced])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["ok"] and summary["nproc"] == nproc
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    moe = [b for b in plan["blocks"] if b["kind"] == "moe"]
    assert moe and {b["strategy"] for b in moe} == {strategy}
    program = (tmp_path / "plan" / "run_plan.py").read_text()
    body = program.split("def moe_0_", 1)[1]
    assert kernel in body and "grouped_mm" not in program
    for f in force:
        kind, forced = f.split("=")[0].split(".")[-1], f.split("=")[1].split("(")[0]
        assert {b["strategy"] for b in plan["blocks"] if b["kind"] == kind} == {forced}


@pytest.mark.slow
def test_hf_moe_plan_under_torchrun_matches_the_model(tmp_path, capsys):
    """The planner's own choice for the tiny DeepSeek-V3 on 2 ranks, run standalone under
    torchrun/gloo, matches the transformers model; its MoE blocks are expert parallel."""
    code = main(["verify", f"hf:{HF_CONFIGS / 'deepseek_v3_tiny.json'}", "--nproc", "2", "--batch", "2",
                 "--seq", "8", "--out", str(tmp_path / "plan"), "--force", "layers.*.moe=ep(tp=2)"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert json.loads(out.out.strip().splitlines()[-1])["ok"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


ODD_MODEL = """
import torch
from torch import nn


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(64, 16)
        self.mixer = nn.Conv1d(16, 16, 3, padding=1)  # weights in a module of no known kind
        self.lm_head = nn.Linear(16, 64, bias=False)

    def forward(self, input_ids):
        x = self.mixer(self.embed_tokens(input_ids).transpose(1, 2)).transpose(1, 2)
        return self.lm_head(x)


def build_model(**size):
    return Odd()


def example_inputs(workload, batch, seq, context, model=None):
    return {"input_ids": torch.zeros(batch, seq, dtype=torch.long)}
"""


def _plan_and_log(loaded):
    from ir.workload import Workload
    from planner.api import log, make_plan

    records = _Records()
    log.addHandler(records)
    try:
        run = make_plan(loaded, hardware="h100-sxm", gpus=2,
                        workload=Workload(kind="prefill", batch=2, seq=8, context=0))
    finally:
        log.removeHandler(records)
    return run, records.messages


def test_unrecognized_block_is_planned_replicated_with_a_warning_when_it_holds_weights(load, tmp_path):
    """transformers' rotary embedding (no weights, one buffer) is not a kind the recognizer
    knows: replicated, and no warning (it costs nothing more). A convolution holding weights
    is replicated too, with a warning naming it."""
    loaded = load(f"hf:{HF_CONFIGS / 'llama_tiny.json'}")
    others = [b.name for b in loaded.graph.blocks if b.kind == "other"]
    assert others == ["rotary_emb"]
    run, messages = _plan_and_log(loaded)
    assert run.plan.block("rotary_emb").strategy == "replicate"
    assert [m for m in messages if "'rotary_emb'" in m] == []

    (tmp_path / "odd.py").write_text(ODD_MODEL)
    loaded = load(str(tmp_path / "odd.py"))
    assert next(b for b in loaded.graph.blocks if b.name == "mixer").kind == "other"
    run, messages = _plan_and_log(loaded)
    assert run.plan.block("mixer").strategy == "replicate"
    assert any("'mixer'" in m and "replicated" in m for m in messages)


@pytest.mark.slow
def test_hf_plan_under_torchrun_reads_a_transformers_named_checkpoint(tmp_path, capsys):
    """The plan directory runs standalone under torchrun (hf_model.py + config.json beside
    run_plan.py), reads each rank's slices of a checkpoint saved with transformers'
    parameter names, and decodes over its sharded KV cache."""
    from safetensors.torch import save_file

    config = load_config(HF_CONFIGS / "llama_tiny.json")
    torch.manual_seed(7)
    model = transformers.AutoModelForCausalLM.from_config(config)
    (tmp_path / "ckpt").mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "ckpt" / "model.safetensors"))
    code = main(["verify", f"hf:{HF_CONFIGS / 'llama_tiny.json'}", "--nproc", "2", "--workload",
                 "decode", "--batch", "2", "--context", "6", "--steps", "3", "--out", str(tmp_path / "plan"),
                 "--checkpoint", str(tmp_path / "ckpt"), *FORCE])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert json.loads(out.out.strip().splitlines()[-1])["ok"]


def transformers_decoding(model, ids: torch.Tensor, prompt: int) -> list[torch.Tensor]:
    """transformers' own decoding of `ids`: the first `prompt` tokens at once, then one token
    a step over the cache it returned — the logits of each call."""
    with torch.no_grad():
        out = model(input_ids=ids[:, :prompt], use_cache=True)
        want, theirs = [out.logits], out.past_key_values
        for s in range(prompt, ids.shape[1]):
            out = model(input_ids=ids[:, s : s + 1], past_key_values=theirs, use_cache=True)
            want.append(out.logits)
            theirs = out.past_key_values
    return want


def model_file_decoding(ours, ids: torch.Tensor, prompt: int) -> tuple[list[torch.Tensor], tuple]:
    """The same decoding through the model file contract: the prompt, then one token a step
    given the cache returned so far (each step's new K/V one token long, joined to it) — the
    logits of each call and the final cache."""
    with torch.no_grad():
        batch = ids.shape[0]
        logits, cache = ours(ids[:, :prompt], position_ids=torch.arange(prompt).expand(batch, prompt))
        got = [logits]
        for s in range(prompt, ids.shape[1]):
            lens = torch.full((batch,), s)
            logits, new = ours(ids[:, s : s + 1], position_ids=lens[:, None].clone(), past_kv=cache, cache_lens=lens)
            assert all(t.shape[2] == 1 for layer in new for t in layer)
            cache = tuple(tuple(torch.cat([c, n], 2) for c, n in zip(old, fresh, strict=True))
                          for old, fresh in zip(cache, new, strict=True))
            got.append(logits)
    return got, cache


@pytest.mark.parametrize(
    "name, changes",
    [("llama_tiny", {}), ("mistral_tiny", {"sliding_window": 3}), ("gpt2_tiny", {}),
     ("qwen2_tiny", {}), ("qwen3_tiny", {}), ("gemma_tiny", {}), ("gemma2_tiny", {"sliding_window": 3}),
     ("phi3_tiny", {}), ("gpt_neox_tiny", {})],
    ids=["llama", "mistral-window3", "gpt2", "qwen2", "qwen3", "gemma", "gemma2-window3", "phi3", "gpt-neox"],
)
def test_decode_over_a_passed_cache_matches_transformers_own_cache(tmp_path, name, changes):
    """A prompt of 5 then 4 single-token steps, each given the K/V the model returned so far
    (the model file contract), against transformers decoding with its own cache and its own
    masks and positions. The window of 3 is passed within the steps, so the sliding-window
    mask over the cache is exercised. Uneven cache lengths (sequence 1 one token behind,
    its cache padded) give sequence 1 the logits of the same model run on that sequence alone."""
    config = load_config(_config_file(tmp_path, name, **changes))
    ours, ids, want, cache = decoding_matches_transformers(config, length=9)
    with torch.no_grad():
        # Uneven: sequence 1 has only 7 valid cache slots of 8; slot 7 holds garbage.
        lens = torch.tensor([8, 7])
        padded = tuple((k.clone(), v.clone()) for k, v in cache)
        for k, v in padded:
            k[1, :, 7], v[1, :, 7] = 3.0, -3.0
        logits, _ = ours(ids[:, 8:9], position_ids=lens[:, None].clone(), past_kv=padded, cache_lens=lens)
        alone, _ = ours(torch.cat([ids[1:, :7], ids[1:, 8:9]], 1))
    torch.testing.assert_close(logits[1, 0], alone[0, -1], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[0, 0], want[-1][0, 0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, nproc, extra",
    [("mistral_tiny", 4, FORCE), ("gpt2_tiny", 2, FORCE),
     ("llama_tiny", 4, ["--force", "layers.*.attention=helix(kvp=2,tpa=2)"])],
    ids=["mistral-window3-tp-4", "gpt2-tp-2", "llama-helix-4"],
)
def test_verify_hf_decode_sharded_matches_the_model(tmp_path, capsys, name, nproc, extra):
    """Teacher-forced decode steps of the generated program (prompt prefilled in the plan's
    layouts, then single tokens) against the model file's reference, which decodes as
    transformers does (test above)."""
    config = _config_file(tmp_path, name, sliding_window=3) if name == "mistral_tiny" else HF_CONFIGS / f"{name}.json"
    code = main(["verify", f"hf:{config}", "--nproc", str(nproc), "--workload", "decode", "--batch", "4",
                 "--context", "5", "--steps", "4", "--in-process", "--out", str(tmp_path / "plan"), *extra])
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["ok"] and summary["nproc"] == nproc, out.out + out.err
    program = (tmp_path / "plan" / "run_plan.py").read_text()
    assert ("attention_0_helix" if "helix" in " ".join(extra) else "attention_0_tp") in program
    assert code == 0, out.out + out.err  # exact, and each rank's weight/KV bytes as planned


# More decoder-only families, each a tiny config: what is special about each is exercised
# under a split (Qwen2: q/k/v biases under column parallel; Qwen3: per-head q/k RMSNorm
# under Helix; Gemma: (1+w) norms, scaled tied embeddings, the table replicated for the
# lookup and split for the head, so held twice, as the plan's memory counts it; Gemma-2: eager soft-capped
# attention, alternating sliding-window layers (window 3, passed within the run), four norms
# per layer; Phi-3: fused qkv_proj and gate_up_proj split by sections; GPT-NeoX: fused
# per-head interleaved QKV with biases, partial rotary, parallel residual, tp=4; Qwen2-MoE:
# shared expert behind a one-column sigmoid gate; Qwen3-MoE: experts over kvp, FFN columns
# over tp). Decode runs also prefill the prompt in the plan's layouts.
TP2 = ["layers.*.attention=tp(tp=2)", "layers.*.mlp=tp(tp=2)", "lm_head=vocab(tp=2)"]
FAMILY_CASES = [
    ("qwen2_tiny", {}, "decode", 2, TP2, "attention_0_tp"),
    ("qwen3_tiny", {}, "decode", 4, ["layers.*.attention=helix(kvp=2,tpa=2)"], "attention_0_helix"),
    ("gemma_tiny", {}, "prefill", 2, [*TP2, "embedding=replicate"], "attention_0_tp"),
    ("gemma2_tiny", {"sliding_window": 3}, "decode", 4, [*TP2, "embedding=vocab(tp=2)"], "attention_0_tp"),
    ("phi3_tiny", {}, "decode", 2, TP2, "mlp_0_tp"),
    ("gpt_neox_tiny", {}, "decode", 4,
     ["layers.*.attention=tp(tp=4)", "layers.*.mlp=tp(tp=4)", "lm_head=vocab(tp=4)"], "attention_0_tp"),
    ("qwen2_moe_tiny", {}, "decode", 2, ["layers.*.moe=ep(tp=2)", "layers.*.attention=tp(tp=2)"], "moe_0_ep"),
    ("qwen3_moe_tiny", {}, "decode", 4, ["layers.*.moe=tp_ep(tp=4)"], "moe_0_tp_ep"),
]


@pytest.mark.parametrize(
    "name, changes, workload, nproc, force, function", FAMILY_CASES,
    ids=[f"{c[0].removesuffix('_tiny')}-{c[2]}-{c[3]}" for c in FAMILY_CASES],
)
def test_verify_hf_family_sharded_matches_the_model(tmp_path, capsys, name, changes, workload, nproc,
                                                     force, function):
    """The generated program (threaded ranks) against the transformers model of each family,
    with the blocks split as forced; every layer's children are recognized (only the rotary
    table is left to `other`, replicated)."""
    spec = f"hf:{_config_file(tmp_path, name, **changes)}"
    sizes = (["--context", "5", "--steps", "4"] if workload == "decode" else ["--seq", "8"])
    forced = [a for f in force for a in ("--force", f)]
    code = main(["verify", spec, "--nproc", str(nproc), "--workload", workload, "--batch", "4", *sizes,
                 "--in-process", "--out", str(tmp_path / "plan"), *forced])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["ok"] and summary["nproc"] == nproc
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert [b["name"] for b in plan["blocks"] if b["kind"] == "other"] == ["rotary_emb"]
    kinds = {b["kind"] for b in plan["blocks"] if b["name"].startswith("layers.1.")}
    assert kinds == ({"norm", "attention", "moe"} if "moe" in name else {"norm", "attention", "mlp"})
    for f in force:
        pattern, strategy = f.split("=", 1)
        chosen = {b["strategy"] for b in plan["blocks"] if b["name"].split(".")[-1] == pattern.split(".")[-1]}
        assert chosen == {strategy.split("(")[0]}
    program = (tmp_path / "plan" / "run_plan.py").read_text()
    assert f"def {function}(" in program
    if any(f.startswith("layers.*.attention=tp") for f in force):
        # heads split through attention: no gather (Phi-3's fused q|k|v is split by
        # sections), never the KV cache; the output projection ends in one all-reduce
        body = program.split("def attention_0_tp(", 1)[1].split("\ndef ", 1)[0]
        assert body.count("all_gather_into_tensor(") == 0
        assert "F.scaled_dot_product_attention" not in body or "tp=Shard(1)" in body.split(
            "F.scaled_dot_product_attention", 1)[1].split("\n", 1)[0]


def test_gemma2_eager_attention_is_split_by_heads_and_not_offered_helix(load, capsys, tmp_path):
    """Gemma-2's soft-capped attention is eager (matmul, tanh cap, softmax, matmul): tp splits
    it by heads (the test above), but Helix and ring attention replace one SDPA kernel, so
    they are not offered for it; forcing Helix says why, without a traceback."""
    loaded = load(f"hf:{HF_CONFIGS / 'gemma2_tiny.json'}")
    attention = [b for b in loaded.graph.blocks if b.kind == "attention"]
    assert attention and all(b.traits["sdpa"] == 0 for b in attention)
    norms = sorted(b.name for b in loaded.graph.blocks if b.kind == "norm" and b.layer == 0)
    assert norms == ["layers.0.norm_attn", "layers.0.norm_attn_post", "layers.0.norm_mlp", "layers.0.norm_mlp_post"]
    llama = load(f"hf:{HF_CONFIGS / 'llama_tiny.json'}")
    assert all(b.traits["sdpa"] == 1 for b in llama.graph.blocks if b.kind == "attention")
    code = main(["plan", f"hf:{HF_CONFIGS / 'gemma2_tiny.json'}", "--gpus", "4", "--workload", "decode",
                 "--batch", "4", "--context", "64", "--force", "layers.*.attention=helix(kvp=2,tpa=2)",
                 "--out", str(tmp_path / "plan")])
    err = capsys.readouterr().err
    assert code == 2 and "eagerly" in err and "Traceback" not in err


def test_ring_attention_absorbs_transformers_reshape_repeat(load):
    """transformers' `repeat_kv` writes the GQA repeat as expand + reshape (not expand +
    flatten): ring attention must walk it back to cat([past_kv, new]) as Helix does, so the
    kernel reads the cached prefix where it lives and the new tokens' K/V with the KV heads
    only. Before, the repeated concat itself was sliced over cp as if it were new tokens."""
    from ir.workload import Workload
    from passes.lower import lower
    from planner.api import make_plan

    run = make_plan(
        load(f"hf:{HF_CONFIGS / 'llama_tiny.json'}"), hardware="h100-sxm", gpus=2,
        workload=Workload(kind="prefill", batch=2, seq=8, context=5),
        force=["layers.*.attention=cp_pass_q(cp=2)"],
    )
    program = lower(run.graph, run.plan)
    kernels = [s for item in program.items for s in getattr(item, "steps", ())
               if getattr(s, "target", "") == "ring_attention_pass_q"]
    assert len(kernels) == sum(b.kind == "attention" for b in run.graph.blocks) == 2
    for kernel in kernels:
        _, k_new, _, k_cache, v_cache = (a.name if a is not None else None for a in kernel.args[:5])
        assert k_cache is not None and v_cache is not None
        assert program.values[k_cache].layout.describe() == "cp=Shard(2)"
        assert program.values[k_new].local_shape[1] == 2  # KV heads, not the 4 repeated ones


@pytest.mark.slow
def test_hf_ring_attention_over_a_cached_prefix_under_torchrun(tmp_path, capsys):
    """The same plan run under torchrun (the ring needs send/recv): 8 new tokens after 5
    cached ones (5 does not divide over cp), then decode steps after a CP prefill."""
    out_dir = str(tmp_path / "plan")
    code = main(["verify", f"hf:{HF_CONFIGS / 'llama_tiny.json'}", "--nproc", "2", "--workload", "prefill",
                 "--batch", "2", "--seq", "8", "--context", "5", "--out", out_dir,
                 "--force", "layers.*.attention=cp_pass_q(cp=2)"])
    out = capsys.readouterr()
    assert code == 0 and json.loads(out.out.strip().splitlines()[-1])["ok"], out.out + out.err
    code = main(["verify", out_dir, "--nproc", "2", "--workload", "decode", "--batch", "2",
                 "--context", "7", "--steps", "4"])
    out = capsys.readouterr()
    assert code == 0 and json.loads(out.out.strip().splitlines()[-1])["ok"], out.out + out.err
