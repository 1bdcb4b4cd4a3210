"""Mixtral-style decoder: Llama attention (GQA, RoPE, KV cache) with a top-k mixture of experts.

This is a model file as a helixplan user writes it. It imports only torch, so the programs
helixplan generates can import it next to themselves. The contract:

* ``build_model(preset="tiny", **size)`` returns the model. With no arguments the model is
  tiny (runs on CPU in milliseconds); ``preset`` picks a real shape and keyword arguments
  (full config names or the short aliases in ``ALIASES``) override single fields. Values may
  be strings, as they arrive from ``--model-arg layers=3``.
* ``example_inputs(workload, batch, seq, context, model=None, device="cpu")`` returns the
  keyword arguments of ``forward`` for a "decode", "prefill" or "train" step.
* ``forward(input_ids, position_ids, past_kv=None, cache_lens=None)`` returns
  ``(logits [B, T, V], new_kv)``.

KV cache layout: ``past_kv[i] = (k, v)`` for layer i, each ``[B, kv_heads, L, head_dim]``,
keys stored after RoPE. Sequence b uses cache positions ``j < cache_lens[b]``; the rest is
padding and is masked out. ``new_kv`` has the same layout with the T new tokens only; the
caller writes it into the cache at ``cache_lens[b]`` onwards.

MoE layout (names as in Hugging Face transformers 5): ``mlp.gate`` is the router
``nn.Linear(hidden, E, bias=False)``; ``mlp.experts.gate_up_proj`` is ``[E, 2 * ffn, hidden]``
(gate rows first, then up rows) and ``mlp.experts.down_proj`` is ``[E, hidden, ffn]``. Routing
is softmax over the router logits, top-k, and the k weights renormalized to sum to 1. The
reference computes every expert densely on every token and combines with the (zero outside
the top-k) routing weights: exact, exportable with symbolic shapes, not efficient.

Every module that owns parameters has ``reset_parameters()``, so a model built on the meta
device can be materialized with ``to_empty`` and re-initialized module by module.
"""

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class MixtralConfig:
    vocab_size: int = 512
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    num_local_experts: int = 4
    num_experts_per_tok: int = 2
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if not 1 <= self.num_experts_per_tok <= self.num_local_experts:
            raise ValueError(
                f"num_experts_per_tok {self.num_experts_per_tok} must be between 1 and "
                f"num_local_experts {self.num_local_experts}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


PRESETS: dict[str, MixtralConfig] = {
    "tiny": MixtralConfig(),
    "mixtral-8x7b": MixtralConfig(
        vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=14336, num_local_experts=8,
        num_experts_per_tok=2, rope_theta=1e6,
    ),
}

ALIASES = {
    "vocab": "vocab_size", "hidden": "hidden_size", "layers": "num_hidden_layers",
    "heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "ffn": "intermediate_size",
    "experts": "num_local_experts", "top_k": "num_experts_per_tok",
}


def make_config(preset: str = "tiny", **size: object) -> MixtralConfig:
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


def rope_cos_sin(
    position_ids: torch.Tensor, dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[B, 1, T, dim]`` for the given positions (no buffer: meta-safe)."""
    exponent = torch.arange(0, dim, 2, device=position_ids.device, dtype=torch.float32) / dim
    inv_freq = 1.0 / theta**exponent
    angles = position_ids[..., None].float() * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, the Hugging Face layout (first half / second half of each head)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


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


class MixtralAttention(nn.Module):
    def __init__(self, config: MixtralConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        new_kv = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # GQA: expand each KV head over its query group (a view + copy, like HF repeat_kv);
        # portable across SDPA backends, unlike enable_gqa=True.
        groups = self.num_heads // self.num_kv_heads
        k = k[:, :, None].expand(-1, -1, groups, -1, -1).flatten(1, 2)
        v = v[:, :, None].expand(-1, -1, groups, -1, -1).flatten(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.o_proj(out), new_kv


class MixtralExperts(nn.Module):
    """E SwiGLU experts stored as stacked weights (one parameter per projection)."""

    def __init__(self, num_experts: int, hidden: int, ffn: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * ffn, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, ffn))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same distribution nn.Linear uses: uniform(+-1/sqrt(fan_in)).
        for weight in (self.gate_up_proj, self.down_proj):
            bound = weight.shape[-1] ** -0.5
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        """``x [N, hidden]``, ``routing_weights [N, E]`` (zero off the top-k) -> ``[N, hidden]``."""
        gate, up = torch.einsum("nh,efh->enf", x, self.gate_up_proj).chunk(2, dim=-1)
        expert_out = torch.einsum("enf,ehf->enh", F.silu(gate) * up, self.down_proj)
        return torch.einsum("ne,enh->nh", routing_weights, expert_out)


class MixtralSparseMoeBlock(nn.Module):
    def __init__(self, config: MixtralConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_local_experts, bias=False)
        self.experts = MixtralExperts(
            config.num_local_experts, config.hidden_size, config.intermediate_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        probs = F.softmax(self.gate(tokens).to(torch.promote_types(x.dtype, torch.float32)), dim=-1)
        top_weights, top_experts = torch.topk(probs, self.top_k, dim=-1)
        top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)
        # Dense [N, E] routing weights: the top-k weights scattered, zero elsewhere.
        routing = torch.zeros_like(probs).scatter(1, top_experts, top_weights).to(x.dtype)
        return self.experts(tokens, routing).view(x.shape)


class MixtralDecoderLayer(nn.Module):
    def __init__(self, config: MixtralConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = MixtralAttention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = MixtralSparseMoeBlock(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn_out, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_kv


class MixtralModel(nn.Module):
    def __init__(self, config: MixtralConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            MixtralDecoderLayer(config) for _ in range(config.num_hidden_layers)
        )
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        past_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
        cache_lens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
        if (past_kv is None) != (cache_lens is None):
            raise ValueError("past_kv and cache_lens must be given together")
        x = self.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        cache_len = 0 if past_kv is None else past_kv[0][0].shape[2]
        mask = attention_mask(input_ids.shape[1], cache_len, cache_lens, x.device)
        new_kv = []
        for i, layer in enumerate(self.layers):
            x, layer_kv = layer(x, cos, sin, mask, None if past_kv is None else past_kv[i])
            new_kv.append(layer_kv)
        return self.norm(x), tuple(new_kv)


class MixtralForCausalLM(nn.Module):
    def __init__(self, config: MixtralConfig) -> None:
        super().__init__()
        self.config = config
        self.model = MixtralModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

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
    """Seeded normal values; on the meta device only the shape (a 128k cache stays free)."""
    if torch.device(device).type == "meta":
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.randn(shape, generator=gen, dtype=dtype).to(device)


def build_model(preset: str = "tiny", **size: object) -> MixtralForCausalLM:
    return MixtralForCausalLM(make_config(preset, **size))


def example_inputs(
    workload: str,
    batch: int,
    seq: int,
    context: int,
    model: MixtralForCausalLM | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, object]:
    """Keyword arguments of ``forward`` for one step of ``workload`` (seeded, reproducible)."""
    if workload not in ("decode", "prefill", "train"):
        raise ValueError(f"unknown workload {workload!r}; valid: decode, prefill, train")
    if workload == "train" and context:
        raise ValueError(f"train steps have no KV cache; got context={context}, use 0")
    config = model.config if model is not None else make_config()
    dtype = next(model.parameters()).dtype if model is not None else torch.float32
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    cache_lens = torch.full((batch,), context, dtype=torch.long)
    inputs: dict[str, object] = {
        "input_ids": input_ids.to(device),
        "position_ids": (cache_lens[:, None] + torch.arange(seq)).to(device),
    }
    if context > 0:
        shape = (batch, config.num_key_value_heads, context, config.head_dim)
        inputs["past_kv"] = tuple(
            (random_tensor(shape, gen, dtype, device), random_tensor(shape, gen, dtype, device))
            for _ in range(config.num_hidden_layers)
        )
        inputs["cache_lens"] = cache_lens.to(device)
    return inputs
