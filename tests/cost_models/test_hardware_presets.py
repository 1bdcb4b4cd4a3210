"""Presets, spec files and their validation."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

import cost_models.hardware as hardware_module
from cost_models import PRESETS, HardwareSpec, load_hardware
from ir.errors import HardwareSpecError

GiB = 2**30


def test_preset_names():
    assert list(PRESETS) == ["a100-sxm", "h100-sxm", "h200", "b200", "gb200-nvl72"]


def test_h100_key_figures():
    h = load_hardware("h100-sxm")
    assert h.peak_flops("bf16") == 989.4e12
    assert h.peak_flops("fp8") == 2 * 989.4e12 + 0.1e12  # 1978.9e12
    assert h.hbm_bytes_per_s == 3.35e12
    assert h.hbm_capacity_bytes == 80 * GiB
    assert h.scaleup_domain_gpus == 8
    assert h.scaleup_bytes_per_s == 450e9  # 900 GB/s bidirectional
    assert h.scaleout_bytes_per_s == 50e9  # 400 Gb/s NDR


def test_other_presets_key_figures():
    a100, h200, b200, gb = (PRESETS[n] for n in ("a100-sxm", "h200", "b200", "gb200-nvl72"))
    assert (a100.peak_flops("bf16"), a100.hbm_bytes_per_s, a100.scaleout_bytes_per_s) == (
        312e12, 2.039e12, 25e9
    )
    assert "fp8" not in a100.peak_flops_per_s and "fp4" not in h200.peak_flops_per_s
    assert (h200.hbm_capacity_bytes, h200.hbm_bytes_per_s) == (141 * GiB, 4.8e12)
    assert (b200.peak_flops("bf16"), b200.peak_flops("fp8"), b200.peak_flops("fp4")) == (
        2.25e15, 4.5e15, 9e15
    )
    assert (b200.hbm_bytes_per_s, b200.scaleup_bytes_per_s, b200.scaleup_domain_gpus) == (
        8e12, 900e9, 8
    )
    assert gb.scaleup_domain_gpus == 72
    for spec in PRESETS.values():
        assert spec.scaleup_bytes_per_s > spec.scaleout_bytes_per_s
        assert spec.scaleup_latency_s < spec.scaleout_latency_s


def test_every_preset_figure_cites_its_source():
    text = Path(hardware_module.__file__).read_text()
    block = text[text.index("PRESETS: dict"):text.index("PROFILE_DIR")]
    figure = re.compile(r"^\s+\"?[\w-]+\"?[=:]\s*[\d.]+(e\d+)?(\s*\*\s*GiB)?,")
    lines = [line for line in block.splitlines() if figure.match(line)]
    assert len(lines) >= 40
    for line in lines:
        assert "#" in line, f"figure without a source comment: {line.strip()}"


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name):
    spec = PRESETS[name]
    again = HardwareSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert hash(again) == hash(spec)


def _full_spec() -> dict:
    return {
        "name": "my-gpu",
        "peak_flops_per_s": {"bf16": 5e14},
        "hbm_bytes_per_s": 2e12,
        "hbm_capacity_bytes": 48 * GiB,
        "scaleup_domain_gpus": 4,
        "scaleup_bytes_per_s": 1e11,
        "scaleup_latency_s": 3e-6,
        "scaleout_bytes_per_s": 2.5e10,
        "scaleout_latency_s": 8e-6,
    }


def test_yaml_spec_file(tmp_path):
    path = tmp_path / "gpu.yaml"
    # YAML 1.1 reads 2e12 as a string; numeric text is accepted
    path.write_text(
        "name: my-gpu\npeak_flops_per_s: {bf16: 5e14, fp8: 1.0e+15}\nhbm_bytes_per_s: 2e12\n"
        "hbm_capacity_bytes: 51539607552\nscaleup_domain_gpus: 4\nscaleup_bytes_per_s: 1e11\n"
        "scaleup_latency_s: 3e-6\nscaleout_bytes_per_s: 2.5e10\nscaleout_latency_s: 8e-6\n"
    )
    spec = load_hardware(str(path))
    assert spec.name == "my-gpu"
    assert spec.peak_flops("fp8") == 1e15
    assert spec.hbm_bytes_per_s == 2e12
    assert spec.scaleup_domain_gpus == 4
    assert spec.domain_of(5) == 1


def test_json_spec_with_base_overrides(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({
        "base": "h100-sxm",
        "hbm_bytes_per_s": 3.0e12,
        "efficiency": {"gemm": {"compute_peak_fraction": 0.7}},
    }))
    spec = load_hardware(path)
    base = PRESETS["h100-sxm"]
    assert spec.hbm_bytes_per_s == 3.0e12
    assert spec.efficiency["gemm"].compute_peak_fraction == 0.7
    assert spec.efficiency["gemm"].compute_fixed_s == base.efficiency["gemm"].compute_fixed_s
    assert spec.scaleup_domain_gpus == base.scaleup_domain_gpus
    assert spec.name == "h100-sxm:tuned"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("hbm_bytes_per_s"), "missing field.*hbm_bytes_per_s"),
    (lambda d: d.update(scaleup_bytes_per_s=-1e11), "scaleup_bytes_per_s is -.*nonsensical"),
    (lambda d: d.update(scaleout_bytes_per_s=400), "bytes per second"),
    (lambda d: d.update(scaleup_latency_s=5), "latencies are seconds"),
    (lambda d: d.update(scaleup_domain_gpus=0), "scaleup_domain_gpus"),
    (lambda d: d.update(peak_flops_per_s={"fp8": 1e15}), "no bf16"),
    (lambda d: d.update(peak_flops_per_s={"bf16": 1e15, "int3": 1e15}), "int3"),
    (lambda d: d.update(hbm_bandwidth=1), "unknown field.*hbm_bandwidth"),
    (lambda d: d.update(hbm_capacity_bytes="lots"), "hbm_capacity_bytes"),
    (lambda d: d.update(efficiency={"gemm": {"compute_peak_fraction": 1.5}}), "fraction"),
    (lambda d: d.update(efficiency={"conv": {}}), "conv"),
])
def test_bad_spec_fields_are_named(tmp_path, mutate, message):
    data = _full_spec()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(HardwareSpecError, match=message) as err:
        load_hardware(str(path))
    assert "bad.json" in str(err.value)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(HardwareSpecError) as err:
        load_hardware("h100")
    for name in PRESETS:
        assert name in str(err.value)


def test_missing_file_and_bad_base(tmp_path):
    with pytest.raises(HardwareSpecError, match="does not exist"):
        load_hardware(str(tmp_path / "nope.yaml"))
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"base": "tpu-v5"}))
    with pytest.raises(HardwareSpecError, match="tpu-v5"):
        load_hardware(path)
    path.write_text("{not json")
    with pytest.raises(HardwareSpecError, match="could not be read"):
        load_hardware(path)


def test_direct_construction_validates():
    with pytest.raises(HardwareSpecError, match="hbm_bytes_per_s"):
        replace(PRESETS["h100-sxm"], hbm_bytes_per_s=0.0)
