"""Fitting the cost model to measured records, on synthetic records from a known spec."""

import json
import random
from dataclasses import replace

import pytest

from cost_models import PRESETS, KernelEfficiency, load_hardware
from cost_models.calibrate import base_for_device, profile_dict, write_profile
from cost_models.comm import collective_seconds
from cost_models.compute import attention_decode_seconds, attention_prefill_seconds, gemm_seconds
from cost_models.fit import fit
from cost_models.records import check, load_records, predict, validate_record
from ir.errors import InputError

BASE = PRESETS["h100-sxm"]
TRUE = replace(
    BASE,
    kernel_launch_s=9e-6,
    scaleup_latency_s=5e-6,
    scaleup_link_efficiency=0.7,
    efficiency={
        "gemm": KernelEfficiency(compute_peak_fraction=0.66, compute_fixed_s=7e-6,
                                 memory_peak_fraction=0.72, memory_fixed_s=3e-6),
        "attention_prefill": KernelEfficiency(compute_peak_fraction=0.42, compute_fixed_s=12e-6,
                                              memory_peak_fraction=0.6, memory_fixed_s=3e-6),
        "attention_decode": KernelEfficiency(compute_peak_fraction=0.3, compute_fixed_s=2e-6,
                                             memory_peak_fraction=0.58, memory_fixed_s=6e-6),
        "elementwise": KernelEfficiency(compute_peak_fraction=0.5, compute_fixed_s=0.0,
                                        memory_peak_fraction=0.9, memory_fixed_s=1.5e-6),
    },
)


def _records(gemm_m, gemm_kn, decode_batch, kv_lens, prefill_seq, copy_pows, ar_pows, seed):
    recs = []
    for m in gemm_m:
        for k, n in gemm_kn:
            recs.append({"kind": "gemm", "m": m, "k": k, "n": n, "dtype": "bf16"})
    for b in decode_batch:
        for kv_len in kv_lens:
            for hq in (32, 64):
                recs.append({"kind": "attention_decode", "batch": b, "q_heads": hq,
                             "kv_heads": 8, "kv_len": kv_len, "head_dim": 128, "dtype": "bf16"})
    for b in (1, 4):
        for s in prefill_seq:
            recs.append({"kind": "attention_prefill", "batch": b, "q_heads": 32, "kv_heads": 8,
                         "seq": s, "head_dim": 128, "causal": True, "dtype": "bf16"})
    recs += [{"kind": "memcpy", "nbytes": 2**p} for p in copy_pows]
    recs += [{"kind": "all_reduce", "gpus": g, "nbytes": 2**p} for g in (2, 4, 8) for p in ar_pows]
    rng = random.Random(seed)
    for r in recs:  # measured = true model with +-2% noise
        r["seconds"] = predict({**r, "seconds": 1.0}, TRUE) * (1 + rng.uniform(-0.02, 0.02))
    return recs


TRAIN = _records([1, 16, 64, 256, 1024, 4096, 16384], [(4096, 4096), (8192, 8192), (1024, 8192)],
                 [1, 8, 32], [512, 4096, 32768], [256, 1024, 4096, 16384], range(16, 31, 2),
                 range(10, 29, 3), seed=0)
HELD_OUT = _records([3, 40, 700, 6000], [(5120, 5120), (8192, 28672)], [2, 24], [1500, 20000],
                    [700, 9000], range(17, 30, 4), range(11, 28, 4), seed=1)


@pytest.fixture(scope="module")
def fitted():
    return fit(TRAIN, BASE)


def test_fit_recovers_the_generating_curves(fitted):
    assert fitted.kernel_launch_s == pytest.approx(9e-6, rel=0.05)
    gemm = fitted.efficiency["gemm"]
    assert gemm.compute_peak_fraction == pytest.approx(0.66, rel=0.03)
    assert gemm.memory_peak_fraction == pytest.approx(0.72, rel=0.03)
    assert fitted.efficiency["attention_decode"].memory_peak_fraction == pytest.approx(
        0.58, rel=0.03)
    assert fitted.efficiency["attention_prefill"].compute_peak_fraction == pytest.approx(
        0.42, rel=0.03)
    assert fitted.scaleup_link_efficiency == pytest.approx(0.7, rel=0.03)
    assert fitted.scaleup_latency_s == pytest.approx(5e-6, rel=0.1)
    # what one GPU cannot measure stays the base's
    assert fitted.scaleout_bytes_per_s == BASE.scaleout_bytes_per_s
    assert fitted.peak_flops_per_s == BASE.peak_flops_per_s
    assert fitted.name == "h100-sxm-calibrated"


def test_fitted_spec_predicts_held_out_shapes(fitted):
    after = check(HELD_OUT, fitted).kinds
    before = check(HELD_OUT, BASE).kinds
    assert set(after) == {"gemm", "attention_decode", "attention_prefill", "memcpy", "all_reduce"}
    for kind, summary in after.items():
        assert summary.median_abs_rel_error < 0.03, kind
        assert before[kind].median_abs_rel_error > 0.1, kind  # the fit had something to fix


def test_profile_round_trip(tmp_path, fitted):
    profile = profile_dict(fitted, "h100-sxm", TRAIN, device="NVIDIA H100 80GB HBM3")
    assert profile["base"] == "h100-sxm"
    assert "scaleout_bytes_per_s" not in profile  # unchanged fields come from the base
    profile_path, records_path = write_profile(tmp_path / "prof.json", profile)
    loaded = load_hardware(str(profile_path))
    assert loaded.to_dict() == fitted.to_dict()
    assert load_records(records_path) == load_records(profile_path)
    assert len(load_records(records_path)) == len(TRAIN)


def test_predict_dispatches_to_the_cost_functions():
    gemm = {"kind": "gemm", "m": 64, "k": 4096, "n": 4096, "dtype": "bf16", "seconds": 1.0}
    assert predict(gemm, BASE) == gemm_seconds(BASE, 64, 4096, 4096)
    dec = {"kind": "attention_decode", "batch": 4, "q_heads": 32, "kv_heads": 8, "kv_len": 4096,
           "head_dim": 128, "dtype": "bf16", "seconds": 1.0}
    assert predict(dec, BASE) == attention_decode_seconds(BASE, 4, 32, 8, 4096, 128)
    pre = {"kind": "attention_prefill", "batch": 1, "q_heads": 32, "kv_heads": 8, "seq": 2048,
           "head_dim": 128, "causal": False, "dtype": "bf16", "seconds": 1.0}
    assert predict(pre, BASE) == attention_prefill_seconds(BASE, 1, 32, 8, 2048, 128,
                                                           causal=False)
    ar = {"kind": "all_reduce", "gpus": 4, "nbytes": 2**20, "seconds": 1.0}
    assert predict(ar, BASE) == collective_seconds(BASE, "all_reduce", 2**20, range(4))


def test_check_reports_relative_errors():
    rec = {"kind": "gemm", "m": 8192, "k": 8192, "n": 8192, "dtype": "bf16"}
    truth = gemm_seconds(BASE, 8192, 8192, 8192)
    result = check([{**rec, "seconds": truth / 1.25}, {**rec, "seconds": truth / 0.5},
                    {**rec, "seconds": truth}], BASE)
    assert [round(r.rel_error, 9) for r in result.rows] == [0.25, -0.5, 0.0]
    assert result.to_json() == {"kinds": {"gemm": {"median_abs_rel_error": 0.25, "n": 3}}}


@pytest.mark.parametrize("record, message", [
    ({"kind": "gemm", "m": 1, "k": 1, "dtype": "bf16", "seconds": 1.0}, "lacks field.*'n'"),
    ({"kind": "gemm", "m": 1, "k": 1, "n": 1.5, "dtype": "bf16", "seconds": 1.0}, "n is 1.5"),
    ({"kind": "gemm", "m": 1, "k": 1, "n": 1, "dtype": "bf16", "seconds": 0}, "seconds"),
    ({"kind": "conv", "seconds": 1.0}, "kind 'conv'"),
    ({"kind": "memcpy", "nbytes": 8, "seconds": 1.0, "gpu": 0}, "unknown field"),
    ({"kind": "attention_prefill", "batch": 1, "q_heads": 1, "kv_heads": 1, "seq": 1,
      "head_dim": 1, "causal": "yes", "dtype": "bf16", "seconds": 1.0}, "causal"),
])
def test_record_validation(record, message):
    with pytest.raises(InputError, match=message):
        validate_record(record, 3)


def test_bad_record_files(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"kind": "gemm"}))
    with pytest.raises(InputError, match="list"):
        load_records(path)
    with pytest.raises(InputError, match="cannot read"):
        load_records(tmp_path / "missing.json")


def test_base_for_device_names():
    assert base_for_device("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert base_for_device("NVIDIA GB200") == "gb200-nvl72"
    assert base_for_device("NVIDIA B200") == "b200"
    assert base_for_device("NVIDIA A100-SXM4-80GB") == "a100-sxm"
    assert base_for_device("NVIDIA L4") is None
