"""A Hugging Face causal LM as a helixplan model file (build_model, example_inputs).

`helixplan plan hf:config.json` copies this file next to `run_plan.py` as `hf_model.py`,
with the config beside it as `config.json`: the generated program builds its reference
model and initial weights through it, exactly as from a user's model file. It imports only
torch and transformers, so the plan directory runs without helixplan installed.

Every model follows the model file contract with a KV cache: `forward(input_ids,
position_ids, past_kv=((k, v), ...), cache_lens)` returns `(logits, new_kv)`, `new_kv` the
T new tokens' cache entries only. Dense and MoE attention cache per-head K/V `[B, kv_heads,
L, head_dim]` (keys after RoPE, as transformers stores them); DeepSeek-V3's latent attention
caches what transformers caches, the normalized latent and the roped shared key
(`kv_cache_shapes`). transformers' own attention layers read the given cache through
`PassedKVCache`.
State-dict names are transformers' own (`model.layers.0.self_attn.q_proj.weight`), so a
checkpoint saved with `save_pretrained` or `safetensors.torch.save_file(model.state_dict())`
loads.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def kv_cache_shapes(config: Any, batch: int, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of one layer's two cache tensors, in the order transformers' attention hands
    them to `Cache.update`: per-head keys and values `[B, kv_heads, L, head_dim]`; for latent
    attention (DeepSeek-V3: `kv_lora_rank`) the compressed KV after its norm `[B, 1, L,
    kv_lora_rank]` and the roped shared key `[B, 1, L, qk_rope_head_dim]` — transformers
    caches the latent and expands it to per-head K/V on every step (`expand_kv`)."""
    rank = getattr(config, "kv_lora_rank", None)
    if rank:
        return (batch, 1, length, int(rank)), (batch, 1, length, int(config.qk_rope_head_dim))
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or int(config.hidden_size) // heads)
    shape = (batch, kv_heads, length, head_dim)
    return shape, shape


def attention_masks(config: Any, tokens: int, cache_len: int, cache_lens: torch.Tensor | None,
                    device: torch.device) -> Any:
    """Boolean masks (True: attend) `[B or 1, 1, T, L + T]` over the L cache slots followed
    by the T new tokens: sequence b's slot j holds its token j and is valid below
    cache_lens[b]; new token t sits at position cache_lens[b] + t. One tensor when all layers
    share a kind, else a dict by layer type ("full_attention", "sliding_attention"), the form
    transformers takes for models that mix them. Built from aranges and cache_lens only (no
    gathers), so B, T and L stay symbolic and every layout rule can split it."""
    query = torch.arange(tokens, device=device)[:, None]
    key = torch.arange(cache_len + tokens, device=device)[None, :]
    new_index = key - cache_len
    causal_new = (key >= cache_len) & (new_index <= query)
    if cache_lens is None:
        full = causal_new[None, None]
        valid_cache = None
    else:
        lens = cache_lens[:, None, None]
        valid_cache = (key < cache_len) & (key < lens)
        full = (valid_cache | causal_new)[:, None]
    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or [])
    if not isinstance(window, int) or (types and "sliding_attention" not in types):
        return full
    sliding = causal_new & (query - new_index < window)
    if valid_cache is None:
        sliding = sliding[None, None]
    else:
        sliding = (sliding | (valid_cache & (lens + query - key < window)))[:, None]
    if types and types != {"sliding_attention"}:
        return {"full_attention": full, "sliding_attention": sliding}
    return sliding


def _for_attention(config: Any, masks: Any, dtype: torch.dtype) -> Any:
    """The masks in the form the model's attention implementation reads: boolean for
    `sdpa`, additive (0 where attended, the dtype's lowest value elsewhere) for `eager`,
    which adds the mask to the scores (Gemma-2's soft-capped attention runs eager)."""
    if getattr(config, "_attn_implementation", "sdpa") == "sdpa":
        return masks
    if isinstance(masks, dict):
        return {k: _for_attention(config, m, dtype) for k, m in masks.items()}
    return (~masks).to(dtype) * torch.finfo(dtype).min


def load_config(path: str | Path) -> Any:
    import transformers

    raw = json.loads(Path(path).read_text())
    model_type = raw.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, **raw)


def _layer_indices(model: torch.nn.Module) -> list[int]:
    """transformers' `layer_idx` of each decoder layer present, in order (a model with some
    layers left out, as when helixplan traces two of a run, keeps the others' indices)."""
    seen: list[int] = []
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and idx not in seen:
            seen.append(idx)
    return seen


def _passed_kv_cache(past_kv: Any, layer_indices: list[int], cache_len: int) -> Any:
    """A transformers Cache over K/V given as tensors (`past_kv[i]` for the i-th layer
    present, or none): each attention layer's `update` returns its past K/V followed by the
    new ones and records the new ones, which `new_kv()` returns in layer order. Nothing is
    stored across calls: the caller owns the cache (the model file contract)."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    class PassedKVLayer(CacheLayerMixin):
        def __init__(self, past: tuple[torch.Tensor, torch.Tensor] | None):
            super().__init__()
            self.past = past
            self.new: tuple[torch.Tensor, torch.Tensor] | None = None

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            return None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            self.new = (key_states, value_states)
            if self.past is None:
                return key_states, value_states
            return (torch.cat([self.past[0], key_states], dim=-2),
                    torch.cat([self.past[1], value_states], dim=-2))

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return cache_len + query_length, 0

        def get_seq_length(self) -> int:
            return cache_len

        def get_max_length(self) -> int:
            return -1

    class PassedKVCache(Cache):
        def __init__(self) -> None:
            pasts = list(past_kv) if past_kv else [None] * len(layer_indices)
            if len(pasts) != len(layer_indices):
                raise ValueError(f"past_kv has {len(pasts)} layers; the model has {len(layer_indices)}")
            super().__init__(layers=[PassedKVLayer(p) for p in pasts])
            self.position = {idx: i for i, idx in enumerate(layer_indices)}

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
                   *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return self.layers[self.position[layer_idx]].update(key_states, value_states)

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return cache_len

        def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
            return cache_len + query_length, 0

        def new_kv(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
            if any(layer.new is None for layer in self.layers):
                raise ValueError("an attention layer did not write its K/V into the cache")
            return tuple(layer.new for layer in self.layers)

    return PassedKVCache()


class _Float64Stays(torch.overrides.TorchFunctionMode):
    """transformers casts to float32 inside norms and rotary embeddings as an *upcast* for
    half precision; run in float64 (training is verified in float64, see run_train) the same
    cast would round the reference's activations to float32 while the traced program keeps
    float64 (the trace, in float32, saw no cast). Under this mode a float64 tensor cast to
    float32 stays float64: the upcast the code means, and no cast at all otherwise."""

    _CASTS = (torch.Tensor.to, torch.Tensor.float, torch.Tensor.type)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self._CASTS and args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64:
            if func is torch.Tensor.float:
                return args[0]
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            kwargs = {k: torch.float64 if v is torch.float32 else v for k, v in kwargs.items()}
        return func(*args, **kwargs)


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def run_causal_lm(model: torch.nn.Module, input_ids: torch.Tensor,
                  position_ids: torch.Tensor | None = None, past_kv: Any = None,
                  cache_lens: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple]:
    """One forward of a transformers causal LM under the model file contract:
    `(logits, new_kv)`, the cache pairs shaped as `kv_cache_shapes` says. The masks of
    `attention_masks` are handed to transformers as 4-D masks, which it uses as given: left
    to itself, transformers derives a packed-sequence mask from the position ids through
    batch-indexed gathers that no layout rule can split."""
    if _dtype(model) == torch.float64:
        with _Float64Stays(), _experts_in_float64(model):
            return _run_causal_lm(model, input_ids, position_ids, past_kv, cache_lens)
    return _run_causal_lm(model, input_ids, position_ids, past_kv, cache_lens)


@contextlib.contextmanager
def _experts_in_float64(model: torch.nn.Module) -> Iterator[None]:
    """transformers' default MoE experts run `torch._grouped_mm`, which takes no float64; the
    float64 reference (training verify) runs them as the per-expert loop ("eager") instead —
    the same arithmetic, one expert at a time."""
    configs = {id(m.config): m.config for m in model.modules()
               if getattr(getattr(m, "config", None), "_experts_implementation", "eager") != "eager"}
    before = {key: c._experts_implementation for key, c in configs.items()}
    for c in configs.values():
        c._experts_implementation = "eager"
    try:
        yield
    finally:
        for key, c in configs.items():
            c._experts_implementation = before[key]


def _run_causal_lm(model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None,
                   past_kv: Any, cache_lens: torch.Tensor | None) -> tuple[torch.Tensor, tuple]:
    config = model.config
    tokens = input_ids.shape[1]
    cache_len = past_kv[0][0].shape[-2] if past_kv else 0
    if past_kv and cache_lens is None:
        cache_lens = torch.full((input_ids.shape[0],), cache_len, dtype=torch.long, device=input_ids.device)
    if position_ids is None:
        position_ids = torch.arange(tokens, device=input_ids.device).expand(input_ids.shape[0], tokens)
        if cache_lens is not None:
            position_ids = cache_lens[:, None] + position_ids
    cache = _passed_kv_cache(past_kv, _layer_indices(model), cache_len)
    mask = _for_attention(config, attention_masks(config, tokens, cache_len, cache_lens, input_ids.device),
                          _dtype(model))
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True)
    return out.logits, cache.new_kv()


class HFCausalLM(torch.nn.Module):
    """The transformers model with its top-level children registered on this module, so
    that parameter names are the model's own; forward follows helixplan's model file
    contract (`run_causal_lm`)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self._model = [model]  # not a child: its children are ours
        for name, child in model.named_children():
            self.add_module(name, child)
        self.config = model.config

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                past_kv: Any = None, cache_lens: torch.Tensor | None = None) -> tuple:
        return run_causal_lm(self._model[0], input_ids, position_ids, past_kv, cache_lens)


def build_model(config: str | None = None) -> HFCausalLM:
    """The model of `config` (default: config.json next to this file), with transformers'
    initialization under the caller's torch seed."""
    import transformers

    cfg = load_config(config or Path(__file__).with_name("config.json"))
    return HFCausalLM(transformers.AutoModelForCausalLM.from_config(cfg)).eval()


def example_inputs(workload: str, batch: int, seq: int, context: int, model: Any = None,
                   device: str | torch.device = "cpu") -> dict[str, Any]:
    """Seeded keyword arguments of forward for one step: `seq` new tokens after a cache of
    `context` tokens (random K/V; only the shape on the meta device)."""
    config = model.config if model is not None else load_config(Path(__file__).with_name("config.json"))
    if workload not in ("decode", "prefill", "train"):
        raise ValueError(f"unknown workload {workload!r}; valid: decode, prefill, train")
    if context and workload == "train":
        raise ValueError(f"train steps have no KV cache (got context {context}); run the program with --context 0")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(config.vocab_size), (batch, seq), generator=gen)
    cache_lens = torch.full((batch,), context, dtype=torch.long)
    inputs: dict[str, Any] = {
        "input_ids": ids.to(device),
        "position_ids": (cache_lens[:, None] + torch.arange(seq)).to(device),
    }
    if context > 0:
        dtype = next(model.parameters()).dtype if model is not None else torch.float32
        shapes = kv_cache_shapes(config, batch, context)

        def tensor(shape: tuple[int, ...]) -> torch.Tensor:
            if torch.device(device).type == "meta":
                return torch.empty(shape, dtype=dtype, device=device)
            return torch.randn(shape, generator=gen, dtype=dtype).to(device)

        inputs["past_kv"] = tuple(tuple(tensor(s) for s in shapes) for _ in range(int(config.num_hidden_layers)))
        inputs["cache_lens"] = cache_lens.to(device)
    return inputs
