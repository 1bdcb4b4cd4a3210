"""Bytes per GPU: weights, KV cache, activations, gradients and optimizer state.

The functions take unsharded sizes; a strategy divides by its shard degrees before or after.

Assumptions, stated once:
- Weights are stored in the weight dtype. Gradients are kept in `grad_dtype` (default: the
  weight dtype) and applied in fp32 by the optimizer.
- AdamW keeps two fp32 moments (8 bytes/param) and, when the weights are not fp32, an fp32
  master copy (4 bytes/param): 12 bytes/param for bf16 weights (mixed precision as in
  Megatron-LM / ZeRO). SGD keeps an fp32 momentum (4 bytes/param) only with momentum, plus the
  same fp32 master copy for low-precision weights.
- Attention is flash-style: no seq×seq score matrix is stored; the backward keeps the
  log-sum-exp per query head in fp32.
- Inference frees a layer's activations before the next layer; its peak is the larger of the
  attention phase and the FFN phase of one layer (eager, intermediates not fused).
- Training with `recompute="full"` keeps only each layer's input; the backward recomputes one
  layer at a time, so the caller adds one layer's `recompute="none"` activations once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ir.errors import InputError
from ir.workload import DTYPE_BYTES, Workload, dtype_size_bytes

Recompute = Literal["none", "full"]
FP32 = DTYPE_BYTES["fp32"]


def _non_negative_int(name: str, v: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InputError(f"{name} is {v!r}; needed an integer >= 0")


@dataclass(frozen=True, kw_only=True)
class DenseLayerShape:
    """One decoder layer: GQA attention (no biases) + a (gated) FFN + two norms."""

    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    ffn_hidden: int
    v_head_dim: int | None = None
    gated_ffn: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden", "q_heads", "kv_heads", "head_dim", "ffn_hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"layer {name} is {v!r}; needed a positive integer")
        if self.v_head_dim is not None and (
            not isinstance(self.v_head_dim, int) or self.v_head_dim < 1
        ):
            raise InputError(f"layer v_head_dim is {self.v_head_dim!r}; needed a positive integer")
        if self.q_heads % self.kv_heads:
            raise InputError(
                f"q_heads {self.q_heads} is not a multiple of kv_heads {self.kv_heads}; "
                "GQA needs whole query groups"
            )

    @property
    def value_dim(self) -> int:
        return self.head_dim if self.v_head_dim is None else self.v_head_dim

    @property
    def attention_params(self) -> int:
        h, d, dv = self.hidden, self.head_dim, self.value_dim
        q = h * self.q_heads * d
        kv = h * self.kv_heads * (d + dv)
        o = self.q_heads * dv * h
        return q + kv + o

    @property
    def ffn_params(self) -> int:
        matrices = 3 if self.gated_ffn else 2
        return matrices * self.hidden * self.ffn_hidden

    @property
    def norm_params(self) -> int:
        return 2 * self.hidden

    @property
    def params(self) -> int:
        return self.attention_params + self.ffn_params + self.norm_params


def weight_bytes(num_params: int, dtype: str = "bf16") -> float:
    _non_negative_int("num_params", num_params)
    return num_params * dtype_size_bytes(dtype)


def kv_cache_bytes(
    *,
    batch: int,
    tokens: int,
    kv_heads: int,
    head_dim: int,
    v_head_dim: int | None = None,
    layers: int = 1,
    dtype: str = "bf16",
) -> float:
    """GQA/MHA cache: layers·batch·tokens·kv_heads·(head_dim + v_head_dim)·bytes
    (= 2·L·K·d per layer per sequence when K and V share head_dim)."""
    for name, v in (("batch", batch), ("tokens", tokens), ("kv_heads", kv_heads),
                    ("head_dim", head_dim), ("layers", layers)):
        _non_negative_int(name, v)
    dv = head_dim if v_head_dim is None else v_head_dim
    return layers * batch * tokens * kv_heads * (head_dim + dv) * dtype_size_bytes(dtype)


def mla_kv_cache_bytes(
    *,
    batch: int,
    tokens: int,
    kv_lora_rank: int,
    rope_head_dim: int,
    layers: int = 1,
    dtype: str = "bf16",
) -> float:
    """MLA cache (DeepSeek-V2/V3): one latent of kv_lora_rank plus the shared RoPE key per
    token per layer: layers·batch·tokens·(kv_lora_rank + rope_head_dim)·bytes."""
    for name, v in (("batch", batch), ("tokens", tokens), ("kv_lora_rank", kv_lora_rank),
                    ("rope_head_dim", rope_head_dim), ("layers", layers)):
        _non_negative_int(name, v)
    return layers * batch * tokens * (kv_lora_rank + rope_head_dim) * dtype_size_bytes(dtype)


def inference_activation_bytes(shape: DenseLayerShape, tokens: int, dtype: str = "bf16") -> float:
    """Peak live activations inside one layer for `tokens` tokens (batch × new tokens).

    Per token, attention phase: residual + normed input + q, k, v + attention output
    = 2H + Q·d + K·d + K·dv + Q·dv; FFN phase: residual + normed input + gate, up and their
    product = 2H + 3F (2H + 2F without a gate). The peak is the larger phase.
    """
    _non_negative_int("tokens", tokens)
    s = shape
    attention = 2 * s.hidden + s.q_heads * (s.head_dim + s.value_dim) + s.kv_heads * (
        s.head_dim + s.value_dim
    )
    ffn = 2 * s.hidden + (3 if s.gated_ffn else 2) * s.ffn_hidden
    return tokens * max(attention, ffn) * dtype_size_bytes(dtype)


def training_activation_bytes(
    shape: DenseLayerShape, tokens: int, dtype: str = "bf16", recompute: Recompute = "none"
) -> float:
    """Activations one layer keeps for its backward, for `tokens` tokens (batch × seq).

    none: per token 4H (both norm inputs and outputs) + Q·d + K·d + K·dv (q, k, v) + Q·dv
    (attention output) + 3F (gate, up, their product; 2F without a gate) elements, plus an
    fp32 log-sum-exp per query head. full: only the layer input, H elements per token.
    """
    _non_negative_int("tokens", tokens)
    e = dtype_size_bytes(dtype)
    s = shape
    if recompute == "full":
        return tokens * s.hidden * e
    if recompute != "none":
        raise InputError(f"recompute {recompute!r} is unknown; choose none or full")
    elements = (
        4 * s.hidden
        + s.q_heads * (s.head_dim + s.value_dim)
        + s.kv_heads * (s.head_dim + s.value_dim)
        + (3 if s.gated_ffn else 2) * s.ffn_hidden
    )
    return tokens * (elements * e + s.q_heads * FP32)


def gradient_bytes(num_params: int, grad_dtype: str = "bf16") -> float:
    _non_negative_int("num_params", num_params)
    return num_params * dtype_size_bytes(grad_dtype)


def optimizer_state_bytes(
    num_params: int,
    optimizer: str = "adamw",
    weight_dtype: str = "bf16",
    *,
    sgd_momentum: bool = False,
) -> float:
    """AdamW: 8 bytes/param of fp32 moments; SGD: 4 with momentum, else 0; both add a 4-byte
    fp32 master copy when the weights are not fp32."""
    _non_negative_int("num_params", num_params)
    dtype_size_bytes(weight_dtype)
    master = 0.0 if weight_dtype == "fp32" else FP32
    if optimizer == "adamw":
        return num_params * (2 * FP32 + master)
    if optimizer == "sgd":
        return num_params * ((FP32 if sgd_momentum else 0.0) + master)
    raise InputError(f"optimizer {optimizer!r} is unknown; choose sgd or adamw")


@dataclass(frozen=True, kw_only=True)
class MemoryBreakdown:
    """Bytes per GPU by category."""

    weights_bytes: float
    kv_cache_bytes: float
    activation_bytes: float
    gradient_bytes: float = 0.0
    optimizer_bytes: float = 0.0

    @property
    def total_bytes(self) -> float:
        return (self.weights_bytes + self.kv_cache_bytes + self.activation_bytes
                + self.gradient_bytes + self.optimizer_bytes)


def dense_layer_memory(
    shape: DenseLayerShape,
    workload: Workload,
    *,
    layers: int = 1,
    recompute: Recompute = "none",
) -> MemoryBreakdown:
    """Unsharded memory of `layers` identical layers under a workload.

    decode/prefill: weights + KV cache of batch·(context + seq) tokens + one layer's peak
    activations for batch·seq tokens. train: weights + stored activations of every layer
    (plus one recomputed layer with full recompute) + gradients + optimizer state.
    """
    _non_negative_int("layers", layers)
    params = shape.params * layers
    weights = weight_bytes(params, workload.weight_dtype)
    tokens = workload.batch * workload.seq
    if workload.kind == "train":
        stored = layers * training_activation_bytes(shape, tokens, workload.act_dtype, recompute)
        if recompute == "full":
            stored += training_activation_bytes(shape, tokens, workload.act_dtype, "none")
        return MemoryBreakdown(
            weights_bytes=weights,
            kv_cache_bytes=0.0,
            activation_bytes=stored,
            gradient_bytes=gradient_bytes(params, workload.weight_dtype),
            optimizer_bytes=optimizer_state_bytes(params, workload.optimizer,
                                                  workload.weight_dtype),
        )
    kv = kv_cache_bytes(
        batch=workload.batch, tokens=workload.context + workload.seq, kv_heads=shape.kv_heads,
        head_dim=shape.head_dim, v_head_dim=shape.v_head_dim, layers=layers,
        dtype=workload.kv_dtype,
    )
    return MemoryBreakdown(
        weights_bytes=weights,
        kv_cache_bytes=kv,
        activation_bytes=inference_activation_bytes(shape, tokens, workload.act_dtype),
    )
