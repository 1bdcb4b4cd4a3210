"""The example model files keep the model-file convention the planner relies on.

Numerics run the tiny models on CPU: a prefill followed by cached decode steps must give the
logits of one prefill over the whole sequence, also with a different cache length per
sequence and garbage in the padding slots; and the tiny models give Hugging Face's logits on
the same weights. Export runs on the meta device with symbolic batch, tokens and cache length.
Parameter counts of the real presets are checked against formulas and published numbers.
"""

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.export import Dim

ROOT = Path(__file__).resolve().parents[1]
HF_CONFIGS = ROOT / "tests" / "configs" / "hf"
EXAMPLES = ("llama", "gpt2", "mixtral", "deepseek")


def load_example(name: str) -> ModuleType:
    module_name = f"helixplan_examples_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(params=EXAMPLES)
def example(request: pytest.FixtureRequest) -> ModuleType:
    return load_example(request.param)


def tiny_model(example: ModuleType) -> torch.nn.Module:
    torch.manual_seed(0)
    return example.build_model().eval()


def map_cache(fn: Callable[..., object], *caches: object) -> object:
    """Apply ``fn`` to matching cache tensors of one or more caches (tuples of tensors)."""
    if isinstance(caches[0], torch.Tensor):
        return fn(*caches)
    return tuple(map_cache(fn, *parts) for parts in zip(*caches, strict=True))


def leaves(cache: object) -> list[torch.Tensor]:
    if isinstance(cache, torch.Tensor):
        return [cache]
    return [leaf for part in cache for leaf in leaves(part)]


def seq_dim(cache_tensor: torch.Tensor) -> int:
    """Token dim of a cache tensor: [B, K, L, d] -> 2, MLA latent [B, L, D] -> 1."""
    return cache_tensor.dim() - 2


def positions(start: torch.Tensor, count: int) -> torch.Tensor:
    return start[:, None] + torch.arange(count)


def random_ids(model: torch.nn.Module, batch: int, seq: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


# -- numerics on CPU -------------------------------------------------------------------------


def test_forward_shapes(example: ModuleType) -> None:
    model = tiny_model(example)
    config = model.config
    inputs = example.example_inputs("prefill", 2, 9, 0, model)
    logits, new_kv = model(**inputs)
    assert logits.shape == (2, 9, config.vocab_size)
    assert torch.isfinite(logits).all()
    assert len(new_kv) == config.num_hidden_layers
    for tensor in leaves(new_kv):
        assert tensor.shape[0] == 2 and tensor.shape[seq_dim(tensor)] == 9


def test_example_inputs_follow_convention(example: ModuleType) -> None:
    model = tiny_model(example)
    inputs = example.example_inputs("decode", 3, 2, 5, model)
    assert set(inputs) == {"input_ids", "position_ids", "past_kv", "cache_lens"}
    assert inputs["cache_lens"].tolist() == [5, 5, 5]
    assert inputs["position_ids"].tolist() == [[5, 6]] * 3
    assert len(inputs["past_kv"]) == model.config.num_hidden_layers
    assert {(c.shape[0], c.shape[seq_dim(c)]) for c in leaves(inputs["past_kv"])} == {(3, 5)}
    logits, _ = model(**inputs)
    assert logits.shape == (3, 2, model.config.vocab_size)
    assert set(example.example_inputs("train", 2, 4, 0, model)) == {"input_ids", "position_ids"}
    assert torch.equal(
        example.example_inputs("prefill", 2, 4, 0, model)["input_ids"],
        example.example_inputs("prefill", 2, 4, 0, model)["input_ids"],
    )
    with pytest.raises(ValueError, match="workload"):
        example.example_inputs("serve", 2, 4, 0, model)
    with pytest.raises(ValueError, match="train"):
        example.example_inputs("train", 2, 4, 8, model)


def test_decode_matches_full_prefill(example: ModuleType) -> None:
    model = tiny_model(example)
    ids = random_ids(model, 2, 9)
    with torch.no_grad():
        full, _ = model(ids, positions(torch.zeros(2, dtype=torch.long), 9))
        logits, cache = model(ids[:, :6], positions(torch.zeros(2, dtype=torch.long), 6))
        assert_close(logits, full[:, :6])
        lens = torch.full((2,), 6)
        for t in range(6, 9):
            logits, new_kv = model(ids[:, t : t + 1], positions(lens, 1), cache, lens)
            assert logits.shape == (2, 1, model.config.vocab_size)
            assert_close(logits[:, 0], full[:, t])
            cache = map_cache(lambda c, n: torch.cat([c, n], dim=seq_dim(c)), cache, new_kv)
            lens = lens + 1


def write_sequence(cache: object, row: int, new_kv: object, start: int) -> object:
    """Write one sequence's K/V (a batch of 1) into ``row`` of the cache from slot ``start``."""

    def write(slots: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        slots = slots.clone()
        dim = seq_dim(slots)
        slots[row : row + 1].narrow(dim, start, new.shape[dim]).copy_(new)
        return slots

    return map_cache(write, cache, new_kv)


def test_ragged_cache_lengths_mask_padding(example: ModuleType) -> None:
    """Two sequences with 6 and 3 cached tokens in one batch; free slots hold large garbage."""
    model = tiny_model(example)
    ids = random_ids(model, 2, 9)
    zero = torch.zeros(1, dtype=torch.long)
    lens = torch.tensor([6, 3])
    with torch.no_grad():
        refs = [model(ids[b : b + 1], positions(zero, 9))[0][0] for b in (0, 1)]

        def garbage(c: torch.Tensor) -> torch.Tensor:
            shape = list(c.shape)
            shape[0], shape[seq_dim(c)] = 2, 12
            return 100.0 * torch.randn(shape)

        cache = None
        for b, prompt_len in enumerate(lens.tolist()):
            _, prompt_kv = model(ids[b : b + 1, :prompt_len], positions(zero, prompt_len))
            cache = map_cache(garbage, prompt_kv) if cache is None else cache
            cache = write_sequence(cache, b, prompt_kv, 0)
        for chunk in (2, 1):
            step_ids = torch.stack([ids[b, lens[b] : lens[b] + chunk] for b in (0, 1)])
            logits, new_kv = model(step_ids, positions(lens, chunk), cache, lens)
            for b in (0, 1):
                assert_close(logits[b], refs[b][lens[b] : lens[b] + chunk])
                row_kv = map_cache(lambda n, b=b: n[b : b + 1], new_kv)
                cache = write_sequence(cache, b, row_kv, int(lens[b]))
            lens = lens + chunk


def test_padding_is_really_masked(example: ModuleType) -> None:
    """Slots at or past cache_lens[b] do not count for sequence b, and only because of the mask.

    Poisoning slots 2-3 leaves the sequence with cache_lens 2 unchanged but changes the one
    with cache_lens 4, so the ragged test above is not passing by luck.
    """
    model = tiny_model(example)
    inputs = example.example_inputs("decode", 2, 1, 4, model)
    with torch.no_grad():
        short = dict(inputs, cache_lens=torch.tensor([4, 2]))
        logits_short, _ = model(**short)

        def poison(c: torch.Tensor) -> torch.Tensor:
            c = c.clone()
            c.narrow(seq_dim(c), 2, 2).mul_(-50.0)
            return c

        poisoned = map_cache(poison, inputs["past_kv"])
        logits_poisoned, _ = model(**dict(short, past_kv=poisoned))
    assert_close(logits_poisoned[1], logits_short[1])
    assert not torch.allclose(logits_poisoned[0], logits_short[0], atol=1e-3)


# -- export on the meta device ---------------------------------------------------------------


def dynamic_shapes(inputs: dict[str, object]) -> dict[str, object]:
    """Batch, tokens and cache length dynamic; every other dim is left to specialize."""
    spec: dict[str, object] = {"input_ids": {0: Dim.AUTO, 1: Dim.AUTO}}
    spec["position_ids"] = {0: Dim.AUTO, 1: Dim.AUTO}
    if "past_kv" in inputs:
        spec["past_kv"] = map_cache(lambda c: {0: Dim.AUTO, seq_dim(c): Dim.AUTO}, inputs["past_kv"])
        spec["cache_lens"] = {0: Dim.AUTO}
    return spec


def symbol(size: object) -> str:
    assert isinstance(size, torch.SymInt), f"expected a symbolic size, got {size!r}"
    return str(size.node.expr)


@pytest.mark.parametrize("context", [0, 7])
def test_exports_on_meta_with_symbolic_batch_tokens_cache(example: ModuleType, context: int) -> None:
    with torch.device("meta"):
        # One layer of each kind keeps the trace short: DeepSeek needs a dense and a MoE layer.
        model = example.build_model(layers=2 if example.__name__.endswith("deepseek") else 1)
    inputs = example.example_inputs("prefill", 3, 5, context, model, device="meta")
    program = torch.export.export(model, (), inputs, strict=False, dynamic_shapes=dynamic_shapes(inputs))

    placeholders = {n.name: n.meta["val"] for n in program.graph.nodes if n.op == "placeholder"}
    batch, tokens = (symbol(s) for s in placeholders["input_ids"].shape)
    assert batch != tokens
    logits, *new_kv = next(n for n in program.graph.nodes if n.op == "output").args[0]
    assert [symbol(s) for s in logits.meta["val"].shape[:2]] == [batch, tokens]
    assert logits.meta["val"].shape[2] == model.config.vocab_size
    assert len(new_kv) == model.config.num_hidden_layers * (1 if example.__name__.endswith("deepseek") else 2)
    new_val = new_kv[0].meta["val"]
    assert symbol(new_val.shape[seq_dim(new_val)]) == tokens
    if context:
        cache_val = next(v for k, v in placeholders.items() if k.startswith("past_kv"))
        cache_len = symbol(cache_val.shape[seq_dim(cache_val)])
        assert symbol(cache_val.shape[0]) == batch and cache_len not in (batch, tokens)
        assert symbol(placeholders["cache_lens"].shape[0]) == batch

    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.scaled_dot_product_attention.default" in targets
    module_paths = {
        path for n in program.graph.nodes for path, _ in n.meta.get("nn_module_stack", {}).values()
    }
    assert "model.layers.0.self_attn.o_proj" in module_paths
    assert f"model.layers.{model.config.num_hidden_layers - 1}.mlp" in module_paths


# -- sizes, presets and names ----------------------------------------------------------------


def llama_params(c: object) -> int:
    d = c.head_dim
    attn = c.hidden_size * d * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    layer = attn + mlp + 2 * c.hidden_size
    return 2 * c.vocab_size * c.hidden_size + c.hidden_size + c.num_hidden_layers * layer


def mixtral_params(c: object) -> int:
    d, h = c.head_dim, c.hidden_size
    attn = h * d * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    moe = c.num_local_experts * (3 * h * c.intermediate_size + h)
    return 2 * c.vocab_size * h + h + c.num_hidden_layers * (attn + moe + 2 * h)


def gpt2_params(c: object) -> int:
    h, f = c.hidden_size, c.intermediate_size
    layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
    embeddings = (c.vocab_size + c.max_position_embeddings) * h  # head tied to the embedding
    return embeddings + c.num_hidden_layers * layer + 2 * h


def deepseek_params(c: object) -> int:
    h, heads = c.hidden_size, c.num_attention_heads
    q = h * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * heads * c.qk_head_dim
    kv = h * c.kv_cache_dim + c.kv_lora_rank + c.kv_lora_rank * heads * (c.qk_nope_head_dim + c.v_head_dim)
    attn = q + kv + heads * c.v_head_dim * h
    dense = 3 * h * c.intermediate_size
    routed = c.n_routed_experts * (3 * h * c.moe_intermediate_size + h)
    moe = routed + 3 * h * c.moe_intermediate_size * c.n_shared_experts
    moe_layers = c.num_hidden_layers - c.first_k_dense_replace
    return (
        2 * c.vocab_size * h + h + c.num_hidden_layers * (attn + 2 * h)
        + c.first_k_dense_replace * dense + moe_layers * moe
    )


PRESET_SIZES = [
    # (example, preset, formula, published parameter count or None)
    ("llama", "llama3-8b", llama_params, 8_030_261_248),
    ("llama", "llama3-70b", llama_params, 70_553_706_496),
    ("llama", "llama3.1-405b", llama_params, 405_853_388_800),
    ("gpt2", "gpt2", gpt2_params, 124_439_808),
    ("gpt2", "gpt2-xl", gpt2_params, 1_557_611_200),
    ("mixtral", "mixtral-8x7b", mixtral_params, 46_702_792_704),
    ("deepseek", "deepseek-v3", deepseek_params, 671_026_404_352),
    ("llama", "tiny", llama_params, None),
    ("gpt2", "tiny", gpt2_params, None),
    ("mixtral", "tiny", mixtral_params, None),
    ("deepseek", "tiny", deepseek_params, None),
]


@pytest.mark.parametrize(("name", "preset", "formula", "published"), PRESET_SIZES)
def test_preset_parameter_count(name: str, preset: str, formula: Callable, published: int | None) -> None:
    with torch.device("meta"):
        model = load_example(name).build_model(preset=preset)
    count = sum(p.numel() for p in model.parameters())
    assert count == formula(model.config)
    if published is not None:
        assert count == published


def test_default_model_is_tiny(example: ModuleType) -> None:
    model = example.build_model()
    assert model.config == example.build_model(preset="tiny").config
    assert 64 <= model.config.hidden_size <= 128 and 2 <= model.config.num_hidden_layers <= 4
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_size_arguments_override_and_accept_strings(example: ModuleType) -> None:
    with torch.device("meta"):
        model = example.build_model(layers="3", hidden="96")
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert model.config.hidden_size == 96
    assert model.model.embed_tokens.weight.shape[1] == 96
    assert example.build_model(preset="tiny", vocab_size=300).config.vocab_size == 300


def test_unknown_preset_or_argument_raises(example: ModuleType) -> None:
    with pytest.raises(ValueError, match="tiny"):
        example.build_model(preset="no-such-model")
    with pytest.raises(ValueError, match="num_hidden_layers"):
        example.build_model(num_layerz=3)
    with pytest.raises(ValueError, match="layers"):
        example.build_model(layers="three")


def test_deepseek_config_conversions() -> None:
    deepseek = load_example("deepseek")
    config = deepseek.build_model(q_lora_rank="none", norm_topk_prob="false").config
    assert config.q_lora_rank is None and config.norm_topk_prob is False
    model = deepseek.build_model(q_lora_rank="none")
    assert hasattr(model.model.layers[0].self_attn, "q_proj")
    assert not hasattr(model.model.layers[0].self_attn, "q_a_proj")
    inputs = deepseek.example_inputs("prefill", 2, 3, 0, model)
    assert model(**inputs)[0].shape == (2, 3, config.vocab_size)


LAYER_PARAMETERS = {
    "llama": [
        "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    ],
    "gpt2": [
        f"{module}.{kind}"
        for module in (
            "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
            "self_attn.o_proj", "post_attention_layernorm", "mlp.up_proj", "mlp.down_proj",
        )
        for kind in ("weight", "bias")
    ],
    "mixtral": [
        "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
        "mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj",
    ],
    "deepseek": [
        "input_layernorm.weight", "self_attn.q_a_proj.weight", "self_attn.q_a_layernorm.weight",
        "self_attn.q_b_proj.weight", "self_attn.kv_a_proj_with_mqa.weight",
        "self_attn.kv_a_layernorm.weight", "self_attn.kv_b_proj.weight",
        "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate.weight",
        "mlp.experts.gate_up_proj", "mlp.experts.down_proj",
        "mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight",
        "mlp.shared_experts.down_proj.weight",
    ],
}


def test_module_names_for_the_block_recognizer(example: ModuleType) -> None:
    name = example.__name__.rsplit("_", 1)[-1]
    with torch.device("meta"):
        model = example.build_model()
    last = model.config.num_hidden_layers - 1
    prefix = f"model.layers.{last}."
    names = {n for n, _ in model.named_parameters()}
    assert sorted(n[len(prefix) :] for n in names if n.startswith(prefix)) == sorted(LAYER_PARAMETERS[name])
    assert {"model.embed_tokens.weight"} <= names
    assert isinstance(model.lm_head, torch.nn.Linear) and isinstance(model.model.norm, torch.nn.Module)
    if name == "gpt2":
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert "model.embed_positions.weight" in names
    if name in ("mixtral", "deepseek"):
        experts = model.model.layers[last].mlp.experts
        num_experts, ffn, hidden = experts.gate_up_proj.shape
        assert experts.down_proj.shape == (num_experts, hidden, ffn // 2)
        assert isinstance(model.model.layers[last].mlp.gate, torch.nn.Linear)
    if name == "deepseek":
        assert "mlp.gate_proj.weight" in {
            n.removeprefix("model.layers.0.") for n in names if n.startswith("model.layers.0.")
        }


def test_meta_model_materializes_with_reset_parameters(example: ModuleType) -> None:
    with torch.device("meta"):
        model = example.build_model()
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    logits, _ = model(**example.example_inputs("prefill", 2, 4, 0, model))
    assert torch.isfinite(logits).all()


# -- agreement with Hugging Face transformers --------------------------------------------------

HF_TWINS = [
    # (example, its preset, HF config of the same shape)
    ("llama", "tiny", "llama_tiny.json"),
    ("llama", "llama3-8b", "llama3_8b.json"),
    ("gpt2", "tiny", "gpt2_tiny.json"),
    ("gpt2", "gpt2", "gpt2.json"),
    ("mixtral", "tiny", "mixtral_tiny.json"),
    ("mixtral", "mixtral-8x7b", "mixtral_8x7b.json"),
    ("deepseek", "tiny", "deepseek_v3_tiny.json"),
    ("deepseek", "deepseek-v3", "deepseek_v3.json"),
]


def hf_model(config_file: str, device: str) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.from_pretrained(HF_CONFIGS / config_file)
    with torch.device(device):
        return transformers.AutoModelForCausalLM.from_config(config).eval()


def test_hf_configs_load_and_build_on_meta() -> None:
    files = sorted(HF_CONFIGS.glob("*.json"))
    assert {f.name for f in files} >= {twin for *_, twin in HF_TWINS} | {"mistral_tiny.json"}
    for path in files:
        model = hf_model(path.name, "meta")
        assert type(model).__name__ == model.config.architectures[0], path.name
        assert model.config.use_cache is False, f"{path.name}: export needs use_cache false"


@pytest.mark.parametrize(("name", "preset", "config_file"), HF_TWINS)
def test_same_parameter_count_as_hf(name: str, preset: str, config_file: str) -> None:
    with torch.device("meta"):
        model = load_example(name).build_model(preset=preset)
    hf = hf_model(config_file, "meta")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())


def gpt2_state_from_hf(hf_state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """HF GPT-2 keeps Conv1D weights as [in, out] and q/k/v fused in c_attn."""
    state = {
        "model.embed_tokens.weight": hf_state["transformer.wte.weight"],
        "model.embed_positions.weight": hf_state["transformer.wpe.weight"],
        "model.norm.weight": hf_state["transformer.ln_f.weight"],
        "model.norm.bias": hf_state["transformer.ln_f.bias"],
        "lm_head.weight": hf_state["lm_head.weight"],
    }
    for i in range(layers):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            state[dst + f"input_layernorm.{kind}"] = hf_state[src + f"ln_1.{kind}"]
            state[dst + f"post_attention_layernorm.{kind}"] = hf_state[src + f"ln_2.{kind}"]
        q, k, v = hf_state[src + "attn.c_attn.weight"].t().chunk(3, dim=0)
        qb, kb, vb = hf_state[src + "attn.c_attn.bias"].chunk(3)
        for proj, weight, bias in (("q", q, qb), ("k", k, kb), ("v", v, vb)):
            state[dst + f"self_attn.{proj}_proj.weight"] = weight
            state[dst + f"self_attn.{proj}_proj.bias"] = bias
        for hf_name, name in (("attn.c_proj", "self_attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"),
                              ("mlp.c_proj", "mlp.down_proj")):
            state[dst + f"{name}.weight"] = hf_state[src + f"{hf_name}.weight"].t()
            state[dst + f"{name}.bias"] = hf_state[src + f"{hf_name}.bias"]
    return state


@pytest.mark.parametrize(("name", "config_file"), [(n, f) for n, p, f in HF_TWINS if p == "tiny"])
def test_tiny_logits_match_hf_on_same_weights(name: str, config_file: str) -> None:
    torch.manual_seed(0)
    hf = hf_model(config_file, "cpu")
    with torch.no_grad():
        for param in hf.parameters():  # move norms off 1 and biases off 0
            param.add_(0.05 * torch.randn_like(param))
    example = load_example(name)
    model = example.build_model().eval()
    state = hf.state_dict()
    if name == "gpt2":
        state = gpt2_state_from_hf(state, model.config.num_hidden_layers)
    model.load_state_dict(state, strict=True)
    ids = random_ids(model, 2, 7)
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        logits, _ = model(ids, positions(torch.zeros(2, dtype=torch.long), 7))
    assert_close(logits, expected)
