"""Kernel work and time against hand-worked numbers on h100-sxm.

h100-sxm: bf16 989.4e12 FLOP/s, fp8 1978.9e12, HBM 3.35e12 B/s; launch floor 6e-6 s eager,
2e-6 s in a CUDA graph. Default curves: gemm compute 0.80 + 4e-6 s, memory 0.80 + 2e-6 s;
decode attention memory 0.70 + 4e-6 s; prefill attention compute 0.50 + 8e-6 s.
"""

import pytest

from cost_models import (
    PRESETS,
    CostModel,
    KernelWork,
    attention_decode_seconds,
    attention_decode_work,
    attention_prefill_seconds,
    attention_prefill_work,
    elementwise_seconds,
    gemm_seconds,
    gemm_work,
    roofline_seconds,
)
from cost_models.compute import achieved_fraction, attention_pairs
from ir.errors import HardwareSpecError, InputError

H100 = PRESETS["h100-sxm"]

# Llama-3-70B attention: 64 query heads, 8 KV heads, head_dim 128.
LLAMA70 = dict(q_heads=64, kv_heads=8, head_dim=128)


def test_decode_attention_bytes_llama3_70b():
    work = attention_decode_work(batch=8, kv_len=32768, **LLAMA70)
    # KV: 8 seq * 8 kv heads * 32768 tokens * (128 + 128) * 2 B = 1,073,741,824 (1 GiB)
    # Q read and O written: 8 * 64 * 1 * 128 * 2 B = 131,072 each
    assert work.nbytes == 1_073_741_824 + 2 * 131_072
    # FLOPs: 2 * 8 * 64 * 1 * 32768 * (128 + 128) = 8,589,934,592
    assert work.flops == 8_589_934_592
    # bandwidth-bound: 1,074,003,968 / (3.35e12 * 0.7) + 4e-6 = 4.57996e-4 + 4e-6
    seconds = attention_decode_seconds(H100, 8, 64, 8, 32768, 128)
    assert seconds == pytest.approx(1_074_003_968 / 2.345e12 + 4e-6)
    assert seconds == pytest.approx(4.61996e-4, rel=1e-5)


def test_decode_attention_fp8_kv_halves_cache_bytes():
    bf16 = attention_decode_work(batch=8, kv_len=32768, **LLAMA70)
    fp8 = attention_decode_work(batch=8, kv_len=32768, kv_dtype="fp8", **LLAMA70)
    assert fp8.nbytes == 536_870_912 + 2 * 131_072
    assert bf16.nbytes - fp8.nbytes == 536_870_912


def test_mla_decode_reads_the_latent_once():
    # DeepSeek-style absorbed MLA: 128 q heads over one 576-wide latent, values 512 wide.
    work = attention_decode_work(batch=1, q_heads=128, kv_heads=1, kv_len=4096, head_dim=576,
                                 v_head_dim=512, latent_kv=True)
    # latent 4096 * 576 * 2 = 4,718,592; Q 128*576*2 = 147,456; O 128*512*2 = 131,072
    assert work.nbytes == 4_718_592 + 147_456 + 131_072
    # FLOPs 2 * 128 * 4096 * (576 + 512) = 1,140,850,688
    assert work.flops == 1_140_850_688


def test_gemm_compute_bound():
    work = gemm_work(8192, 8192, 8192)
    assert work.flops == 2 * 8192**3  # 1,099,511,627,776
    assert work.nbytes == 3 * 8192 * 8192 * 2  # 402,653,184
    # 1.0995e12 / (989.4e12 * 0.8) + 4e-6 = 1.389126e-3 + 4e-6
    assert gemm_seconds(H100, 8192, 8192, 8192) == pytest.approx(
        1_099_511_627_776 / 791.52e12 + 4e-6
    )


def test_gemm_vector_matrix_is_memory_bound():
    # m=1: (1*8192 + 8192*8192 + 1*8192) * 2 B = 134,250,496 B; / (3.35e12*0.8) + 2e-6
    assert gemm_seconds(H100, 1, 8192, 8192) == pytest.approx(134_250_496 / 2.68e12 + 2e-6)


def test_fp8_gemm_uses_fp8_peak_and_bf16_output():
    work = gemm_work(8192, 8192, 8192, "fp8")
    assert work.nbytes == 2 * 8192 * 8192 * 1 + 8192 * 8192 * 2
    assert gemm_seconds(H100, 8192, 8192, 8192, "fp8") == pytest.approx(
        1_099_511_627_776 / (1978.9e12 * 0.8) + 4e-6
    )


def test_fp4_needs_blackwell():
    with pytest.raises(HardwareSpecError, match="fp4"):
        gemm_seconds(H100, 4096, 4096, 4096, "fp4")
    assert gemm_seconds(PRESETS["b200"], 4096, 4096, 4096, "fp4") > 0


def test_launch_floor_eager_and_cuda_graph():
    assert gemm_seconds(H100, 1, 128, 128) == pytest.approx(6e-6)
    assert gemm_seconds(H100, 1, 128, 128, cuda_graphs=True) == pytest.approx(
        max(2e-6, (128 + 128 * 128 + 128) * 2 / 2.68e12 + 2e-6, 2 * 128 * 128 / 791.52e12 + 4e-6)
    )
    assert elementwise_seconds(H100, 1024) == pytest.approx(6e-6)
    assert CostModel(hardware=H100, cuda_graphs=True).elementwise(1024) < 6e-6


def test_efficiency_grows_with_problem_size():
    fractions = [achieved_fraction(H100, gemm_work(s, s, s)) for s in (256, 1024, 4096, 16384)]
    assert fractions == sorted(fractions)
    assert fractions[0] < 0.1  # 2*256^3 = 33.5 MFLOP: floor-bound, 5.6 TFLOP/s
    assert 0.75 < fractions[-1] < 0.8


def test_prefill_pairs_causal_and_cached():
    assert attention_pairs(4, 0, causal=True) == 10  # 1+2+3+4
    assert attention_pairs(4, 3, causal=True) == 22  # 4*3 + 10
    assert attention_pairs(4, 3, causal=False) == 28  # 4*(3+4)


def test_prefill_llama3_70b_8k_causal():
    work = attention_prefill_work(batch=1, seq=8192, **LLAMA70)
    # pairs 8192*8193/2 = 33,558,528; FLOPs 2 * 64 * pairs * 256 = 1,099,645,845,504
    assert work.flops == 1_099_645_845_504
    # bytes: Q 64*8192*128*2 + KV 8*8192*256*2 + O 64*8192*128*2 = 301,989,888
    assert work.nbytes == 134_217_728 + 33_554_432 + 134_217_728
    # compute-bound: flops / (989.4e12 * 0.5) + 8e-6
    assert attention_prefill_seconds(H100, 1, 64, 8, 8192, 128) == pytest.approx(
        1_099_645_845_504 / 494.7e12 + 8e-6
    )


def test_prefill_with_cached_prefix_costs_more_and_reads_the_cache():
    plain = attention_prefill_work(batch=1, seq=1024, **LLAMA70)
    cached = attention_prefill_work(batch=1, seq=1024, cached=7168, **LLAMA70)
    # extra pairs 1024*7168 per head; extra KV bytes 8 * 7168 * 256 * 2
    assert cached.flops - plain.flops == 2 * 64 * 1024 * 7168 * 256
    assert cached.nbytes - plain.nbytes == 8 * 7168 * 256 * 2
    assert attention_prefill_seconds(H100, 1, 64, 8, 1024, 128, cached=7168) > (
        attention_prefill_seconds(H100, 1, 64, 8, 1024, 128)
    )
    non_causal = attention_prefill_work(batch=1, seq=1024, causal=False, **LLAMA70)
    assert non_causal.flops == 2 * 64 * 1024 * 1024 * 256


def test_roofline_takes_the_larger_side():
    # 1e12 FLOPs and 1e9 bytes as a gemm: compute 1e12/791.52e12 + 4e-6 > memory 1e9/2.68e12
    assert roofline_seconds(H100, flops=1e12, nbytes=1e9) == pytest.approx(1e12 / 791.52e12 + 4e-6)
    assert roofline_seconds(H100, flops=1e6, nbytes=1e10) == pytest.approx(1e10 / 2.68e12 + 2e-6)


@pytest.mark.parametrize("bad", [
    lambda: gemm_work(0, 1, 1),
    lambda: gemm_work(1, 1, 1, "int3"),
    lambda: attention_decode_work(batch=1, q_heads=8, kv_heads=8, kv_len=-1, head_dim=64),
    lambda: attention_prefill_work(batch=1, q_heads=8, kv_heads=8, seq=4, head_dim=64, cached=-1),
    lambda: KernelWork(kind="conv", flops=1, nbytes=1),
    lambda: KernelWork(kind="gemm", flops=float("nan"), nbytes=1),
])
def test_bad_shapes_raise_input_error(bad):
    with pytest.raises(InputError):
        bad()
