"""DeepSeek-V3-style decoder: multi-head latent attention (MLA) and a routed + shared MoE.

A helixplan model file (only torch imported). The contract, shared by all examples:

* ``build_model(preset="tiny", **size)``: tiny by default, ``preset`` picks a real shape,
  keyword arguments (config names or ``ALIASES``) override fields; strings are converted.
* ``example_inputs(workload, batch, seq, context, model=None, device="cpu")``: the keyword
  arguments of ``forward`` for a "decode", "prefill" or "train" step.
* ``forward(input_ids, position_ids, past_kv=None, cache_lens=None)`` returns
  ``(logits [B, T, V], new_kv)``.

MLA cache layout: ``past_kv[i]`` is ONE tensor ``[B, L, kv_lora_rank + qk_rope_head_dim]``
per layer: the compressed latent ``c_kv`` after ``kv_a_layernorm`` followed by the shared
key ``k_pe`` after RoPE (what Hugging Face caches too). Slots ``j >= cache_lens[b]`` are
padding and masked. ``new_kv[i]`` is the same for the T new tokens. Attention expands the
latent with ``kv_b_proj`` into per-head ``k_nope`` and ``v`` (the plain, not the absorbed
form; both give the same numbers).

MoE layout (as in Hugging Face transformers 5): layers ``i < first_k_dense_replace`` have a
dense SwiGLU ``mlp``; the others have ``mlp.gate`` (router, ``nn.Linear(hidden, E)`` plus the
``e_score_correction_bias`` buffer), ``mlp.experts.gate_up_proj [E, 2 * moe_ffn, hidden]``
(gate rows, then up rows), ``mlp.experts.down_proj [E, hidden, moe_ffn]`` and
``mlp.shared_experts`` (a SwiGLU MLP of width ``n_shared_experts * moe_ffn``). Routing is
DeepSeek-V3's: sigmoid scores, group-limited top-k on scores + bias, weights gathered from the
scores, renormalized and scaled by ``routed_scaling_factor``. All experts run densely on all
tokens and are combined with the (zero outside the top-k) weights: exact and exportable.

Simplifications against the released model: RoPE uses the rotate-half layout (the checkpoint
uses interleaved pairs; permute the rope columns of q_b_proj / kv_a_proj_with_mqa to load it),
no YaRN scaling (softmax scale is qk_head_dim ** -0.5) and no multi-token-prediction head.
"""

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class DeepseekV3Config:
    vocab_size: int = 512
    hidden_size: int = 128
    num_hidden_layers: int = 3
    first_k_dense_replace: int = 1
    num_attention_heads: int = 4
    q_lora_rank: int | None = 64
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    intermediate_size: int = 256
    moe_intermediate_size: int = 64
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    n_shared_experts: int = 1
    n_group: int = 2
    topk_group: int = 1
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    # Initial e_score_correction_bias of expert e: router_skew * (1 - e / (E - 1)), so low
    # experts are chosen more (tests use it for skewed routing); 0 is the usual zero bias.
    router_skew: float = 0.0
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.n_routed_experts % self.n_group or self.n_routed_experts // self.n_group < 2:
            raise ValueError(
                f"n_routed_experts {self.n_routed_experts} must split into n_group "
                f"{self.n_group} groups of at least 2 experts"
            )
        if self.topk_group > self.n_group:
            raise ValueError(f"topk_group {self.topk_group} exceeds n_group {self.n_group}")
        reachable = self.topk_group * (self.n_routed_experts // self.n_group)
        if not 1 <= self.num_experts_per_tok <= reachable:
            raise ValueError(
                f"num_experts_per_tok {self.num_experts_per_tok} must be between 1 and the "
                f"{reachable} experts in topk_group {self.topk_group} groups"
            )
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim {self.qk_rope_head_dim} must be even for RoPE")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_cache_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim


PRESETS: dict[str, DeepseekV3Config] = {
    "tiny": DeepseekV3Config(),
    "deepseek-v3": DeepseekV3Config(
        vocab_size=129280, hidden_size=7168, num_hidden_layers=61, first_k_dense_replace=3,
        num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, intermediate_size=18432,
        moe_intermediate_size=2048, n_routed_experts=256, num_experts_per_tok=8,
        n_shared_experts=1, n_group=8, topk_group=4,
    ),
}

ALIASES = {
    "vocab": "vocab_size", "hidden": "hidden_size", "layers": "num_hidden_layers",
    "first_k_dense": "first_k_dense_replace", "heads": "num_attention_heads",
    "ffn": "intermediate_size", "moe_ffn": "moe_intermediate_size",
    "experts": "n_routed_experts", "top_k": "num_experts_per_tok", "shared": "n_shared_experts",
}


def convert(key: str, value: object, current: object) -> object:
    """``value`` (maybe a CLI string) as the type of the preset's ``current`` value."""
    if key in ("q_lora_rank",) and (value is None or str(value).lower() in ("none", "null")):
        return None
    if isinstance(current, bool):
        if str(value).lower() in ("1", "true", "yes"):
            return True
        if str(value).lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"size argument {key}={value!r} is not a boolean")
    kind = int if current is None else type(current)
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"size argument {key}={value!r} is not a {kind.__name__}") from err


def make_config(preset: str = "tiny", **size: object) -> DeepseekV3Config:
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
        overrides[name] = convert(name, value, getattr(base, name))
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
    """Rotate-half RoPE (first half / second half of the rope channels)."""
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


class DeepseekV3Attention(nn.Module):
    """Multi-head latent attention; the cache is the per-token latent, shared by all heads."""

    def __init__(self, config: DeepseekV3Config) -> None:
        super().__init__()
        self.config = config
        heads, hidden = config.num_attention_heads, config.hidden_size
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, heads * config.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, config.q_lora_rank, bias=False)
            self.q_a_layernorm = nn.RMSNorm(config.q_lora_rank, eps=config.rms_norm_eps)
            self.q_b_proj = nn.Linear(config.q_lora_rank, heads * config.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, config.kv_cache_dim, bias=False)
        self.kv_a_layernorm = nn.RMSNorm(config.kv_lora_rank, eps=config.rms_norm_eps)
        self.kv_b_proj = nn.Linear(
            config.kv_lora_rank, heads * (config.qk_nope_head_dim + config.v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(heads * config.v_head_dim, hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        past: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        batch, seq, _ = x.shape
        heads, nope, rope = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim
        if c.q_lora_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(batch, seq, heads, c.qk_head_dim).transpose(1, 2).split(
            [nope, rope], dim=-1
        )
        q = torch.cat([q_nope, apply_rope(q_pe, cos, sin)], dim=-1)

        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([c.kv_lora_rank, rope], dim=-1)
        k_pe = apply_rope(k_pe[:, None], cos, sin)[:, 0]
        new_latent = torch.cat([self.kv_a_layernorm(c_kv), k_pe], dim=-1)
        latent = new_latent if past is None else torch.cat([past, new_latent], dim=1)

        c_kv, k_pe = latent.split([c.kv_lora_rank, rope], dim=-1)
        kv = self.kv_b_proj(c_kv).view(batch, -1, heads, nope + c.v_head_dim).transpose(1, 2)
        k_nope, v = kv.split([nope, c.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_pe[:, None].expand(-1, heads, -1, -1)], dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, seq, heads * c.v_head_dim)
        return self.o_proj(out), new_latent


class DeepseekV3MLP(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DeepseekV3Router(nn.Linear):
    """The router: an ``nn.Linear(hidden, E)`` plus the load-balancing bias used for choice."""

    def __init__(self, hidden: int, num_experts: int, skew: float = 0.0) -> None:
        self.skew = skew
        super().__init__(hidden, num_experts, bias=False)
        self.register_buffer("e_score_correction_bias", torch.zeros(num_experts))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "e_score_correction_bias"):
            experts = self.e_score_correction_bias.shape[0]
            with torch.no_grad():
                ramp = 1.0 - torch.arange(experts, dtype=torch.float32) / max(experts - 1, 1)
                self.e_score_correction_bias.copy_(self.skew * ramp)


class DeepseekV3Experts(nn.Module):
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


class DeepseekV3MoE(nn.Module):
    def __init__(self, config: DeepseekV3Config) -> None:
        super().__init__()
        self.config = config
        self.gate = DeepseekV3Router(
            config.hidden_size, config.n_routed_experts, config.router_skew
        )
        self.experts = DeepseekV3Experts(
            config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        )
        self.shared_experts = DeepseekV3MLP(
            config.hidden_size, config.moe_intermediate_size * config.n_shared_experts
        )

    def route(self, tokens: torch.Tensor) -> torch.Tensor:
        """Dense routing weights ``[N, E]``: the top-k weights scattered, zero elsewhere."""
        c = self.config
        scores = torch.sigmoid(self.gate(tokens).to(torch.promote_types(tokens.dtype, torch.float32)))
        choice = scores + self.gate.e_score_correction_bias
        # Keep the topk_group groups whose best two experts score highest.
        grouped = choice.view(-1, c.n_group, c.n_routed_experts // c.n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        group_idx = group_scores.topk(c.topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores).scatter(1, group_idx, 1.0)
        expert_mask = group_mask[:, :, None].expand_as(grouped).reshape(choice.shape)
        choice = choice.masked_fill(expert_mask == 0, float("-inf"))
        top_experts = choice.topk(c.num_experts_per_tok, dim=-1).indices
        top_weights = scores.gather(1, top_experts)
        if c.norm_topk_prob:
            top_weights = top_weights / (top_weights.sum(dim=-1, keepdim=True) + 1e-20)
        top_weights = top_weights * c.routed_scaling_factor
        return torch.zeros_like(scores).scatter(1, top_experts, top_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        routed = self.experts(tokens, self.route(tokens).to(x.dtype)).view(x.shape)
        return routed + self.shared_experts(x)


class DeepseekV3DecoderLayer(nn.Module):
    def __init__(self, config: DeepseekV3Config, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = DeepseekV3Attention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if layer_idx < config.first_k_dense_replace:
            self.mlp = DeepseekV3MLP(config.hidden_size, config.intermediate_size)
        else:
            self.mlp = DeepseekV3MoE(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        past: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attn_out, new_latent = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_latent


class DeepseekV3Model(nn.Module):
    def __init__(self, config: DeepseekV3Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DeepseekV3DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        past_kv: tuple[torch.Tensor, ...] | None = None,
        cache_lens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        if (past_kv is None) != (cache_lens is None):
            raise ValueError("past_kv and cache_lens must be given together")
        c = self.config
        x = self.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(position_ids, c.qk_rope_head_dim, c.rope_theta, x.dtype)
        cache_len = 0 if past_kv is None else past_kv[0].shape[1]
        mask = attention_mask(input_ids.shape[1], cache_len, cache_lens, x.device)
        new_kv = []
        for i, layer in enumerate(self.layers):
            x, new_latent = layer(x, cos, sin, mask, None if past_kv is None else past_kv[i])
            new_kv.append(new_latent)
        return self.norm(x), tuple(new_kv)


class DeepseekV3ForCausalLM(nn.Module):
    def __init__(self, config: DeepseekV3Config) -> None:
        super().__init__()
        self.config = config
        self.model = DeepseekV3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        past_kv: tuple[torch.Tensor, ...] | None = None,
        cache_lens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        hidden, new_kv = self.model(input_ids, position_ids, past_kv, cache_lens)
        return self.lm_head(hidden), new_kv


def build_model(preset: str = "tiny", **size: object) -> DeepseekV3ForCausalLM:
    return DeepseekV3ForCausalLM(make_config(preset, **size))


def example_inputs(
    workload: str,
    batch: int,
    seq: int,
    context: int,
    model: DeepseekV3ForCausalLM | None = None,
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
        shape = (batch, context, config.kv_cache_dim)
        if torch.device(device).type == "meta":
            inputs["past_kv"] = tuple(
                torch.empty(shape, dtype=dtype, device=device)
                for _ in range(config.num_hidden_layers)
            )
        else:
            inputs["past_kv"] = tuple(
                torch.randn(shape, generator=gen, dtype=dtype).to(device)
                for _ in range(config.num_hidden_layers)
            )
        inputs["cache_lens"] = cache_lens.to(device)
    return inputs
