"""serve-plan: the rate arithmetic on hand-worked cases, the traffic reader, and the command
on a tiny model."""

from __future__ import annotations

import json
import math

import pytest

from ir.errors import InputError
from planner.serve.rates import (
    HybridBatch,
    PoolReplica,
    balanced_decode_batch,
    colocated_replicas,
    decode_requests_per_s,
    fluid_tokens_per_s_per_gpu,
    match_pools,
    prefill_requests_per_s,
    transfer_requests_per_s,
    transfer_seconds,
)
from planner.serve.traffic import Traffic, read_traffic
from tests.conftest import EXAMPLES

# A prefill replica of 2 GPUs finishing 4 prompts/s; a decode replica of 4 GPUs for 6 req/s.
PREFILL = PoolReplica(gpus=2, requests_per_s=4.0)
DECODE = PoolReplica(gpus=4, requests_per_s=6.0)


def test_replica_rates():
    # 2 prompts per 0.5 s step = 4 req/s.
    assert prefill_requests_per_s(2, 0.5) == pytest.approx(4.0)
    # 64 slots, 20 ms per token, 100 tokens per request: a slot frees every 2 s -> 32 req/s.
    assert decode_requests_per_s(64, 0.02, 100) == pytest.approx(32.0)
    # 1 GB of KV over 4 senders at 10 GB/s each: 25 ms plus 10 us latency.
    assert transfer_seconds(1e9, 4, 1e10, 1e-5) == pytest.approx(0.02501)
    # 6 GPUs at 1 GB/s each move 6 requests of 1 GB per second.
    assert transfer_requests_per_s(6, 1e9, 1e9) == pytest.approx(6.0)


def test_match_pools_finds_the_rate_matched_split():
    # On 16 GPUs, (prefill replicas n_p, decode replicas n_d = (16 - 2 n_p) // 4):
    #   n_p=1: min(4, 18) = 4     n_p=2: min(8, 18) = 8    n_p=3: min(12, 12) = 12 (14 GPUs)
    #   n_p=4: min(16, 12) = 12 (16 GPUs: more GPUs for the same rate)   n_p=5,6: min(.., 6) = 6
    # so 3 prefill + 2 decode replicas serve 12 req/s on 14 GPUs and neither pool idles.
    a = match_pools(PREFILL, DECODE, 16)
    assert (a.prefill_replicas, a.decode_replicas, a.gpus_used) == (3, 2, 14)
    assert a.requests_per_s == pytest.approx(12.0)
    assert a.prefill_utilization == pytest.approx(1.0)
    assert a.decode_utilization == pytest.approx(1.0)


def test_match_pools_trims_the_idle_pool():
    # On 10 GPUs: n_p=1 -> n_d=2: min(4, 12) = 4, trimmed to ceil(4/6) = 1 decode replica;
    # n_p=2 -> n_d=1: min(8, 6) = 6 req/s on 8 GPUs (prefill busy 6/8 = 75%);
    # n_p=3 -> n_d=1: min(12, 6) = 6 on 10 GPUs, more GPUs for the same rate. Best: 2 + 1.
    a = match_pools(PREFILL, DECODE, 10)
    assert (a.prefill_replicas, a.decode_replicas, a.gpus_used) == (2, 1, 8)
    assert a.requests_per_s == pytest.approx(6.0)
    assert a.prefill_utilization == pytest.approx(0.75)


def test_match_pools_at_a_given_rate():
    # 10 req/s needs ceil(10/4) = 3 prefill and ceil(10/6) = 2 decode replicas = 14 GPUs,
    # each pool busy 10/12.
    a = match_pools(PREFILL, DECODE, 16, rate=10.0)
    assert (a.prefill_replicas, a.decode_replicas, a.gpus_used) == (3, 2, 14)
    assert a.prefill_utilization == pytest.approx(10 / 12)
    assert a.decode_utilization == pytest.approx(10 / 12)
    # 13 req/s needs 4 x 2 + 3 x 4 = 20 GPUs > 16.
    assert match_pools(PREFILL, DECODE, 16, rate=13.0) is None


def test_match_pools_with_the_kv_link_binding():
    # 1 GB of KV per request, 1 GB/s per prefill GPU: each prefill GPU hands off 1 req/s, so
    # n_p replicas move 2 n_p req/s. n_p=3: min(12, 12, 6) = 6; n_p=4 (n_d=2): min(16, 12, 8)
    # = 8; n_p=5 (n_d=1): min(20, 6, 10) = 6. Best: 4 prefill, ceil(8/6) = 2 decode, 8 req/s.
    a = match_pools(PREFILL, DECODE, 16, link_bytes_per_s=1e9, kv_bytes_per_request=1e9)
    assert (a.prefill_replicas, a.decode_replicas) == (4, 2)
    assert a.requests_per_s == pytest.approx(8.0)
    assert a.transfer_utilization == pytest.approx(1.0)
    assert a.prefill_utilization == pytest.approx(0.5)
    # At a given 7 req/s the link needs ceil(7 / 2) = 4 prefill replicas (not ceil(7/4) = 2).
    b = match_pools(PREFILL, DECODE, 16, rate=7.0, link_bytes_per_s=1e9, kv_bytes_per_request=1e9)
    assert (b.prefill_replicas, b.decode_replicas) == (4, 2)


def test_fluid_tokens_per_gpu():
    # A request costs 2/4 = 0.5 prefill GPU-s and 4/6 decode GPU-s: 100 tokens / (7/6) s.
    assert fluid_tokens_per_s_per_gpu(PREFILL, DECODE, 100) == pytest.approx(600 / 7)


def test_hybrid_batch_rates():
    # Chunk 512 of 2048-token prompts, 16 decodes of 64-token outputs, 50 ms per iteration:
    # intake 512 / (2048 * 0.05) = 5 req/s, drain 16 / (64 * 0.05) = 5 req/s: balanced.
    assert balanced_decode_batch(512, 2048, 64) == 16
    h = HybridBatch(chunk_tokens=512, decode_batch=16, step_s=0.05, prompt_tokens=2048, output_tokens=64)
    assert h.requests_per_s == pytest.approx(5.0)
    assert h.ttft_s == pytest.approx(4 * 0.05)  # 2048 / 512 = 4 iterations
    assert h.ttl_s == pytest.approx(0.05)
    # Half the decodes: drain 8 / 3.2 = 2.5 req/s binds.
    half = HybridBatch(chunk_tokens=512, decode_batch=8, step_s=0.05, prompt_tokens=2048, output_tokens=64)
    assert half.requests_per_s == pytest.approx(2.5)
    # A 3000-token prompt takes ceil(3000/512) = 6 iterations.
    long = HybridBatch(chunk_tokens=512, decode_batch=16, step_s=0.05, prompt_tokens=3000, output_tokens=64)
    assert long.ttft_s == pytest.approx(0.3)
    # 5 req/s per 4-GPU replica on 16 GPUs: 4 fit; 12 req/s needs 3; 21 needs 5 > 4.
    assert colocated_replicas(h, 4, 16) == 4
    assert colocated_replicas(h, 4, 16, rate=12.0) == 3
    assert colocated_replicas(h, 4, 16, rate=21.0) is None


def test_read_traffic(tmp_path):
    f = tmp_path / "mix.csv"
    f.write_text("prompt_tokens,output_tokens\n100,10\n300,30\n\n")
    t = read_traffic(f)
    assert (t.requests, t.prompt_tokens, t.output_tokens) == (2, 200, 20)
    assert t.decode_context_tokens == 210  # 200 + 20 / 2
    bad = tmp_path / "bad.csv"
    bad.write_text("100,10\n100,abc\n")
    with pytest.raises(InputError, match="bad.csv:2"):
        read_traffic(bad)
    with pytest.raises(InputError, match="not a file"):
        read_traffic(tmp_path / "missing.csv")


def test_serve_plan_on_a_tiny_model(load, tmp_path):
    from cost_models import load_hardware
    from planner.serve.choose import Slos
    from planner.serve.plan import serve_plan
    from planner.serve.pools import PlanSettings

    loaded = load(str(EXAMPLES / "llama.py"))
    traffic = Traffic(requests=1, prompt_tokens=2048, output_tokens=128, max_prompt_tokens=2048,
                      max_output_tokens=128)
    slos = Slos(ttft_s=0.05, ttl_s=0.002)
    grids = dict(prefill_batches=(1, 4), max_decode_batch=256, chunk_tokens=(256, 1024, 4096))
    r = serve_plan(loaded, PlanSettings(hardware=load_hardware("h100-sxm")), traffic, gpus=4,
                   slos=slos, **grids)
    d, c = r.disaggregated, r.colocated
    assert d is not None and c is not None
    assert d.ttft_s <= slos.ttft_s and d.ttl_s <= slos.ttl_s
    assert c.hybrid.ttft_s <= slos.ttft_s and c.hybrid.ttl_s <= slos.ttl_s
    a = d.allocation
    assert a.gpus_used <= 4
    # The served rate is what the binding pool carries.
    assert a.requests_per_s == pytest.approx(min(
        a.prefill_replicas * d.prefill.workload.batch / d.prefill.step_s,
        a.decode_replicas * d.decode.workload.batch / (d.decode.step_s * 128)))
    assert max(a.prefill_utilization, a.decode_utilization) == pytest.approx(1.0)
    # KV per request: 2 layers x 2 (K,V) x 2 KV heads x 32 dims x 2 bytes x 2048 tokens.
    assert r.kv_bytes_per_request == 2 * 2 * 2 * 32 * 2 * 2048
    assert c.requests_per_s == pytest.approx(c.replicas * c.hybrid.requests_per_s)
    # A given rate below the maximum uses no more GPUs.
    half = serve_plan(loaded, PlanSettings(hardware=load_hardware("h100-sxm")), traffic, gpus=4,
                      slos=slos, rate=a.requests_per_s / 2, **grids)
    assert half.disaggregated.allocation.gpus_used <= a.gpus_used
    assert math.isclose(half.disaggregated.allocation.requests_per_s, a.requests_per_s / 2)


def test_serve_plan_cli(tmp_path):
    from planner.cli import main

    mix = tmp_path / "mix.csv"
    mix.write_text("prompt_tokens,output_tokens\n1024,64\n3072,192\n")
    out = tmp_path / "serve"
    assert main(["serve-plan", "examples/llama.py", "--gpus", "4", "--traffic", str(mix),
                 "--ttft-slo", "50", "--ttl-slo", "2", "--out", str(out), "--no-programs"]) == 0
    data = json.loads((out / "serve.json").read_text())
    assert data["traffic"]["mean_prompt_tokens"] == 2048
    assert data["disaggregated"]["ttl_s"] <= 0.002 and data["colocated"]["ttft_s"] <= 0.05
    assert data["pareto"]["disaggregated"] and data["pareto"]["colocated"]
    assert (out / "pareto.png").stat().st_size > 1000


def test_serve_plan_cli_errors(tmp_path, capsys):
    from planner.cli import main

    mix = tmp_path / "mix.csv"
    mix.write_text("1024,64\n")
    base = ["serve-plan", "examples/llama.py", "--gpus", "4", "--out", str(tmp_path / "o")]
    assert main(base + ["--traffic", str(tmp_path / "none.csv"), "--ttft-slo", "50", "--ttl-slo", "2"]) == 2
    assert "prompt_tokens,output_tokens" in capsys.readouterr().err
    assert main(base + ["--traffic", str(mix), "--ttft-slo", "1e-6", "--ttl-slo", "1e-6"]) == 2
    err = capsys.readouterr().err
    assert "relax --ttft-slo/--ttl-slo" in err and "fastest prefill" in err


def _option(kind: str, gpus: int, batch: int, step_s: float, **extra):
    from ir.workload import Workload
    from planner.serve.pools import PoolOption

    wl = Workload(kind="decode" if kind == "decode" else "prefill", batch=batch, seq=1, context=0)
    return PoolOption(kind=kind, gpus=gpus, workload=wl, step_s=step_s, plan="", memory_bytes=0,
                      decode_batch=extra.pop("decode_batch", 0), extra=extra)


def test_best_configurations_under_slos():
    from cost_models.comm import Link
    from planner.serve.choose import Slos, best_colocated, best_disaggregated

    traffic = Traffic(requests=1, prompt_tokens=1000, output_tokens=100, max_prompt_tokens=1000,
                      max_output_tokens=100)
    # Prefill A: 2 GPUs, 1 prompt per 0.4 s = 2.5 req/s; KV 2e8 B over 2 senders at 1 GB/s
    # = 0.1 s, TTFT 0.5 s. Prefill B: 1 GPU, 0.9 s + 0.2 s = 1.1 s > 1 s SLO: excluded.
    prefills = [_option("prefill", 2, 1, 0.4), _option("prefill", 1, 1, 0.9)]
    # Decode X: 20 ms > 15 ms SLO, excluded. Decode Y: 1 GPU, 8 slots, 10 ms, 100 tokens:
    # 8 / (0.01 * 100) = 8 req/s.
    decodes = [_option("decode", 2, 50, 0.02), _option("decode", 1, 8, 0.01)]
    link = Link(alpha_s=0.0, bytes_per_s=1e9)
    slos = Slos(ttft_s=1.0, ttl_s=0.015)
    best = best_disaggregated(prefills, decodes, traffic, 8, slos, link, 2e8)
    # On 8 GPUs: n_p=1 -> 2.5; n_p=2 -> 5; n_p=3 (n_d <= 2) -> min(7.5, 16, link 30) = 7.5 with
    # one decode replica: 3 x 2 + 1 = 7 GPUs, 7.5 * 100 / 7 tokens/s per GPU.
    assert (best.prefill.gpus, best.decode.gpus) == (2, 1)
    a = best.allocation
    assert (a.prefill_replicas, a.decode_replicas, a.gpus_used) == (3, 1, 7)
    assert a.requests_per_s == pytest.approx(7.5)
    assert best.ttft_s == pytest.approx(0.5)
    assert best.tokens_per_s_per_gpu == pytest.approx(750 / 7)
    # Co-located: chunk 250 + 25 decodes in 50 ms on 2 GPUs: 250 / (1000 * 0.05) = 5 req/s
    # = 25 / (100 * 0.05); TTFT 4 iterations = 0.2 s; TTL 50 ms misses 15 ms, meets 60 ms.
    coloc = [_option("colocated", 2, 1, 0.05, decode_batch=25, chunk_tokens=250)]
    assert best_colocated(coloc, traffic, 8, slos) is None
    c = best_colocated(coloc, traffic, 8, Slos(ttft_s=1.0, ttl_s=0.06))
    assert (c.replicas, c.requests_per_s) == (4, pytest.approx(20.0))
    assert c.tokens_per_s_per_gpu == pytest.approx(250.0)
    # At 12 req/s: ceil(12 / 5) = 3 replicas, 6 GPUs, 12 * 100 / 6 = 200 tokens/s per GPU.
    c12 = best_colocated(coloc, traffic, 8, Slos(ttft_s=1.0, ttl_s=0.06), rate=12.0)
    assert (c12.replicas, c12.gpus_used) == (3, 6)
    assert c12.tokens_per_s_per_gpu == pytest.approx(200.0)
