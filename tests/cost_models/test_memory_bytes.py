"""Memory per GPU against hand-worked numbers for a Llama-3-70B-shaped layer
(hidden 8192, 64 query / 8 KV heads, head_dim 128, SwiGLU FFN 28672)."""

import pytest

from cost_models import (
    DenseLayerShape,
    dense_layer_memory,
    gradient_bytes,
    inference_activation_bytes,
    kv_cache_bytes,
    mla_kv_cache_bytes,
    optimizer_state_bytes,
    training_activation_bytes,
    weight_bytes,
)
from ir.errors import InputError
from ir.workload import Workload

LAYER = DenseLayerShape(hidden=8192, q_heads=64, kv_heads=8, head_dim=128, ffn_hidden=28672)
# q 8192*8192 = 67,108,864; k, v 8192*1024 = 8,388,608 each; o 67,108,864
ATTN_PARAMS = 150_994_944
# gate, up, down: 3 * 8192 * 28672 = 704,643,072
FFN_PARAMS = 704_643_072
LAYER_PARAMS = ATTN_PARAMS + FFN_PARAMS + 2 * 8192  # 855,654,400


def test_llama3_70b_layer_params_and_weights():
    assert LAYER.attention_params == ATTN_PARAMS
    assert LAYER.ffn_params == FFN_PARAMS
    assert LAYER.params == 855_654_400
    # 80 layers + 2 * 128256 * 8192 embeddings/LM head = 70.55e9, the published size
    assert (80 * LAYER.params + 2 * 128256 * 8192) / 1e9 == pytest.approx(70.55, abs=0.01)
    assert weight_bytes(LAYER.params, "bf16") == 1_711_308_800
    assert weight_bytes(LAYER.params, "fp8") == 855_654_400


def test_llama3_70b_kv_cache_b8_l32k():
    # 8 sequences * 32768 tokens * 8 heads * (128 + 128) * 2 B = 1,073,741,824 per layer
    assert kv_cache_bytes(batch=8, tokens=32768, kv_heads=8, head_dim=128) == 2**30
    assert kv_cache_bytes(batch=8, tokens=32768, kv_heads=8, head_dim=128, layers=80) == 80 * 2**30
    assert kv_cache_bytes(batch=8, tokens=32768, kv_heads=8, head_dim=128, dtype="fp8") == 2**29


def test_llama3_70b_layer_decode_memory():
    workload = Workload(kind="decode", batch=8, seq=1, context=32767)  # 32768 cached after step
    mem = dense_layer_memory(LAYER, workload)
    assert mem.weights_bytes == 1_711_308_800
    assert mem.kv_cache_bytes == 1_073_741_824
    # peak activations: FFN phase 2*8192 + 3*28672 = 102,400 elements/token, 8 tokens, 2 B
    assert mem.activation_bytes == 1_638_400
    assert mem.total_bytes == 1_711_308_800 + 1_073_741_824 + 1_638_400  # 2,786,689,024
    assert mem.gradient_bytes == mem.optimizer_bytes == 0


def test_inference_activation_peak_is_the_larger_phase():
    # attention phase for Llama-70B: 2*8192 + 64*256 + 8*256 = 34,816 < FFN 102,400
    assert inference_activation_bytes(LAYER, 1) == 102_400 * 2
    wide_attn = DenseLayerShape(hidden=1024, q_heads=64, kv_heads=64, head_dim=128, ffn_hidden=64)
    # 2*1024 + 64*256 + 64*256 = 34,816 > 2*1024 + 3*64
    assert inference_activation_bytes(wide_attn, 3, "fp32") == 3 * 34_816 * 4


def test_training_activations_with_and_without_recompute():
    # 4*8192 + 64*256 + 8*256 + 3*28672 = 137,216 elements * 2 B + 64 heads * 4 B LSE
    per_token = 137_216 * 2 + 64 * 4
    assert training_activation_bytes(LAYER, 4096) == 4096 * per_token  # 1,125,122,048
    assert training_activation_bytes(LAYER, 4096, recompute="full") == 4096 * 8192 * 2
    with pytest.raises(InputError):
        training_activation_bytes(LAYER, 4096, recompute="some")


def test_optimizer_state_and_gradients():
    n = 1_000_000
    assert optimizer_state_bytes(n, "adamw", "bf16") == 12 * n  # 2 fp32 moments + fp32 master
    assert optimizer_state_bytes(n, "adamw", "fp32") == 8 * n
    assert optimizer_state_bytes(n, "sgd", "bf16") == 4 * n  # master copy only
    assert optimizer_state_bytes(n, "sgd", "fp32", sgd_momentum=True) == 4 * n
    assert optimizer_state_bytes(n, "sgd", "fp32") == 0
    assert gradient_bytes(n, "bf16") == 2 * n
    with pytest.raises(InputError):
        optimizer_state_bytes(n, "lion")


def test_training_layer_memory():
    workload = Workload(kind="train", batch=1, seq=4096, optimizer="adamw")
    mem = dense_layer_memory(LAYER, workload, layers=2, recompute="full")
    assert mem.kv_cache_bytes == 0
    assert mem.gradient_bytes == 2 * LAYER_PARAMS * 2
    assert mem.optimizer_bytes == 2 * LAYER_PARAMS * 12
    # two stored layer inputs + one layer recomputed in full during backward
    assert mem.activation_bytes == 2 * 4096 * 8192 * 2 + 4096 * (137_216 * 2 + 64 * 4)


def test_mla_kv_cache_deepseek_v3():
    # 61 layers * 131072 tokens * (512 + 64) * 2 B = 9,210,691,584 per sequence
    got = mla_kv_cache_bytes(batch=1, tokens=131072, kv_lora_rank=512, rope_head_dim=64, layers=61)
    assert got == 9_210_691_584


def test_layer_shape_validation():
    with pytest.raises(InputError):
        DenseLayerShape(hidden=8192, q_heads=60, kv_heads=8, head_dim=128, ffn_hidden=1)
    with pytest.raises(InputError):
        DenseLayerShape(hidden=0, q_heads=8, kv_heads=8, head_dim=128, ffn_hidden=1)
    with pytest.raises(InputError):
        kv_cache_bytes(batch=-1, tokens=1, kv_heads=1, head_dim=1)
