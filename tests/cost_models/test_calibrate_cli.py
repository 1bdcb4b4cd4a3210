"""`helixplan calibrate` on a machine without a GPU: --check works, --out exits 2."""

import json

import pytest
import torch

from cost_models import PRESETS, gemm_seconds
from planner.cli import main

H100 = PRESETS["h100-sxm"]


def _records(path):
    t = gemm_seconds(H100, 4096, 4096, 4096)
    recs = [
        {"kind": "gemm", "m": 4096, "k": 4096, "n": 4096, "dtype": "bf16", "seconds": t / 1.1},
        {"kind": "gemm", "m": 4096, "k": 4096, "n": 4096, "dtype": "bf16", "seconds": t / 0.8},
        {"kind": "attention_decode", "batch": 8, "q_heads": 64, "kv_heads": 8, "kv_len": 32768,
         "head_dim": 128, "dtype": "bf16", "seconds": 5e-4},
        {"kind": "attention_prefill", "batch": 1, "q_heads": 64, "kv_heads": 8, "seq": 8192,
         "head_dim": 128, "causal": True, "dtype": "bf16", "seconds": 3e-3},
    ]
    path.write_text(json.dumps(recs))
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_calibrate_out_without_cuda_exits_2(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["calibrate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "CUDA" in err and "--check" in err
    assert not out.exists()


def test_check_json_format(tmp_path, capsys):
    path = _records(tmp_path / "m.json")
    assert main(["calibrate", "--check", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"kinds"}
    assert set(data["kinds"]) == {"gemm", "attention_decode", "attention_prefill"}
    gemm = data["kinds"]["gemm"]
    assert gemm["n"] == 2
    # relative errors +0.10 and -0.20: median of |.| over two = 0.15
    assert gemm["median_abs_rel_error"] == pytest.approx(0.15)
    assert set(gemm) == {"median_abs_rel_error", "n"}


def test_check_against_another_hardware(tmp_path, capsys):
    path = _records(tmp_path / "m.json")
    assert main(["calibrate", "--check", str(path), "--json", "--hardware", "b200"]) == 0
    b200 = json.loads(capsys.readouterr().out)
    assert b200["kinds"]["gemm"]["median_abs_rel_error"] != pytest.approx(0.15)


def test_check_table(tmp_path, capsys):
    path = _records(tmp_path / "m.json")
    assert main(["calibrate", "--check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "attention_decode" in out and "median" in out and "+10.0%" in out


@pytest.mark.parametrize("argv, message", [
    (["calibrate"], "exactly one of"),
    (["calibrate", "--check", "missing.json"], "cannot read"),
    (["calibrate", "--check", "{records}", "--hardware", "tpu"], "valid presets"),
])
def test_user_errors_exit_2(tmp_path, capsys, argv, message):
    records = str(_records(tmp_path / "m.json"))
    argv = [a.replace("{records}", records) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
