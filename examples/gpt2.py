"""GPT-2-style decoder: learned positions, LayerNorm, multi-head attention, GELU MLP, tied head.

A helixplan model file (only torch imported). The contract, shared by all examples:

* ``build_model(preset="tiny", **size)``: tiny by default, ``preset`` picks a real shape,
  keyword arguments (config names or ``ALIASES``) override fields; strings are converted.
* ``example_inputs(workload, batch, seq, context, model=None, device="cpu")``: the keyword
  arguments of ``forward`` for a "decode", "prefill" or "train" step.
* ``forward(input_ids, position_ids, past_kv=None, cache_lens=None)`` returns
  ``(logits [B, T, V], new_kv)``.

KV cache layout: ``past_kv[i] = (k, v)``, each ``[B, heads, L, head_dim]`` (no RoPE; positions
come from ``model.embed_positions``). Slots ``j >= cache_lens[b]`` are padding and masked.
``new_kv`` holds the T new tokens only, in the same layout.

Module names follow the other examples rather than Hugging Face's ``c_attn``/``c_fc``: q/k/v
are separate ``nn.Linear`` with bias (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``), the MLP
is ``up_proj`` -> GELU(tanh) -> ``down_proj``, and ``lm_head.weight`` is
``model.embed_tokens.weight`` (one parameter; ``to_empty`` breaks the tie, so a model
materialized from the meta device must call ``tie_weights()`` again).
"""

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class GPT2Config:
    vocab_size: int = 512
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 1024
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads


PRESETS: dict[str, GPT2Config] = {
    "tiny": GPT2Config(),
    "gpt2": GPT2Config(
        vocab_size=50257, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072,
    ),
    "gpt2-xl": GPT2Config(
        vocab_size=50257, hidden_size=1600, num_hidden_layers=48, num_attention_heads=25,
        intermediate_size=6400,
    ),
}

ALIASES = {
    "vocab": "vocab_size", "hidden": "hidden_size", "layers": "num_hidden_layers",
    "heads": "num_attention_heads", "ffn": "intermediate_size",
    "max_positions": "max_position_embeddings",
}


def make_config(preset: str = "tiny", **size: object) -> GPT2Config:
    """The preset's config with ``size`` overrides, converting CLI strings to the field types."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    base = PRESETS[preset]
    names = [f.name for f in dataclasses.fields(base)]
    overrides = {}
    for key, value in size.items():
        name = ALIASES.get(key, key)
        if name not in names:
            raise ValueError(
                f"unknown size argument {key!r}; valid: {', '.join(names + list(ALIASES))}"
            )
        kind = type(getattr(base, name))
        try:
            overrides[name] = kind(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"size argument {key}={value!r} is not a {kind.__name__}") from err
    return dataclasses.replace(base, **overrides)


def attention_mask(
    seq: int, cache_len: int, cache_lens: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Boolean mask ``[B or 1, 1, T, L + T]``, True where a new token may attend.

    Keys are the L cache slots followed by the T new tokens. Built from arange comparisons
    only, so B, T and L stay symbolic under torch.export.
    """
    query = torch.arange(seq, device=device)[:, None]
    key = torch.arange(cache_len + seq, device=device)[None, :]
    causal_new = (key >= cache_len) & (key - cache_len <= query)
    if cache_lens is None:
        return causal_new[None, None]
    valid_cache = (key < cache_len) & (key < cache_lens[:, None, None])
    return (valid_cache | causal_new)[:, None]


class GPT2Attention(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.o_proj = nn.Linear(hidden, hidden)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, seq, hidden = x.shape
        heads = (batch, seq, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(heads).transpose(1, 2)
        k = self.k_proj(x).view(heads).transpose(1, 2)
        v = self.v_proj(x).view(heads).transpose(1, 2)
        new_kv = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, hidden)), new_kv


class GPT2MLP(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(hidden, ffn)
        self.down_proj = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's "gelu_new" is the tanh approximation.
        return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = GPT2Attention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = GPT2MLP(config.hidden_size, config.intermediate_size)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn_out, new_kv = self.self_attn(self.input_layernorm(x), mask, past)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_kv


class GPT2Model(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(GPT2Block(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        past_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
        cache_lens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
        if (past_kv is None) != (cache_lens is None):
            raise ValueError("past_kv and cache_lens must be given together")
        x = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
        cache_len = 0 if past_kv is None else past_kv[0][0].shape[2]
        mask = attention_mask(input_ids.shape[1], cache_len, cache_lens, x.device)
        new_kv = []
        for i, layer in enumerate(self.layers):
            x, layer_kv = layer(x, mask, None if past_kv is None else past_kv[i])
            new_kv.append(layer_kv)
        return self.norm(x), tuple(new_kv)


class GPT2LMHeadModel(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.model = GPT2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the head; call again after ``to_empty``, which unties."""
        self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        past_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
        cache_lens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
        hidden, new_kv = self.model(input_ids, position_ids, past_kv, cache_lens)
        return self.lm_head(hidden), new_kv


def random_tensor(
    shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, device: str | torch.device
) -> torch.Tensor:
    """Seeded normal values; on the meta device only the shape (a long cache stays free)."""
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.randn(shape, generator=gen, dtype=dtype).to(device)


def build_model(preset: str = "tiny", **size: object) -> GPT2LMHeadModel:
    return GPT2LMHeadModel(make_config(preset, **size))


def example_inputs(
    workload: str,
    batch: int,
    seq: int,
    context: int,
    model: GPT2LMHeadModel | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, object]:
    """Keyword arguments of ``forward`` for one step of ``workload`` (seeded, reproducible)."""
    if workload not in ("decode", "prefill", "train"):
        raise ValueError(f"unknown workload {workload!r}; valid: decode, prefill, train")
    if workload == "train" and context:
        raise ValueError(f"train steps have no KV cache; got context={context}, use 0")
    config = model.config if model is not None else make_config()
    if context + seq > config.max_position_embeddings:
        raise ValueError(
            f"context {context} + seq {seq} exceeds the {config.max_position_embeddings} learned "
            "positions of this GPT-2; pass a larger max_positions or a shorter context"
        )
    dtype = next(model.parameters()).dtype if model is not None else torch.float32
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    cache_lens = torch.full((batch,), context, dtype=torch.long)
    inputs: dict[str, object] = {
        "input_ids": input_ids.to(device),
        "position_ids": (cache_lens[:, None] + torch.arange(seq)).to(device),
    }
    if context > 0:
        shape = (batch, config.num_attention_heads, context, config.head_dim)
        inputs["past_kv"] = tuple(
            (random_tensor(shape, gen, dtype, device), random_tensor(shape, gen, dtype, device))
            for _ in range(config.num_hidden_layers)
        )
        inputs["cache_lens"] = cache_lens.to(device)
    return inputs
