"""The catalogue of bad inputs (README, Troubleshooting): each one ends in a one-paragraph
message that names what was given and what to do, and exit code 2 — never a traceback.

Most cases run `planner.cli.main` in this process (fast); one test runs the same command
line as a subprocess to hold the whole path, interpreter start-up included, to the promise.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli import main
from tests.conftest import EXAMPLES, FIXTURES, ROOT

LLAMA = str(EXAMPLES / "llama.py")


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects a malformed value itself, with code 2
        code = exc.code
    return code, capsys.readouterr().err


def plan_argv(model: str, *extra: str, out: str | None = None) -> list[str]:
    return ["plan", model, *extra, "--out", out or "/tmp/helixplan-bad-input-never-written"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {
        "raises": d / "raises.py",
        "hw_syntax": d / "hw_syntax.yaml",
        "hw_incomplete": d / "hw_incomplete.yaml",
        "hw_negative": d / "hw_negative.yaml",
        "hw_unknown_field": d / "hw_unknown_field.yaml",
        "dir_model": d / "model_dir.py",
        "unreadable": d / "unreadable.py",
    }
    files["raises"].write_text("raise RuntimeError('boom while importing')\n")
    files["hw_syntax"].write_text("{base: h100-sxm, \n")
    files["hw_incomplete"].write_text("hbm_capacity_bytes: 80e9\n")
    files["hw_negative"].write_text("base: h100-sxm\nhbm_capacity_bytes: -3\n")
    files["hw_unknown_field"].write_text("base: h100-sxm\nhbm_bytes: 80e9\n")
    files["dir_model"].mkdir()
    files["unreadable"].write_text("def build_model(**size): ...\n")
    return files


# (id, argv builder, regexes the message must contain)
CASES = [
    ("missing model file", lambda f: plan_argv("no/such/model.py", "--gpus", "2"),
     [r"'no/such/model.py' does not exist", r"build_model\(\)"]),
    ("model path is a directory", lambda f: plan_argv(str(f["dir_model"]), "--gpus", "2"),
     [r"is a directory"]),
    ("model file raises on import", lambda f: plan_argv(str(f["raises"]), "--gpus", "2"),
     [r"importing model file .*raises\.py' failed with RuntimeError: boom while importing",
      r"`python .*raises\.py` imports cleanly"]),
    ("no build_model", lambda f: plan_argv(str(FIXTURES / "no_build.py"), "--gpus", "2"),
     [r"defines no build_model\(\)"]),
    ("data-dependent branch", lambda f: plan_argv(str(FIXTURES / "branch_in_layer.py"), "--gpus", "2"),
     [r"in module 'layers\.1\.gate' \(Gate\.forward at .*branch_in_layer\.py:15\)",
      r"data-dependent control flow", r"torch\.where"]),
    ("hardware file not YAML", lambda f: plan_argv(LLAMA, "--gpus", "2", "--hardware", str(f["hw_syntax"])),
     [r"hw_syntax\.yaml' could not be read", r"valid JSON or YAML"]),
    ("hardware file incomplete", lambda f: plan_argv(LLAMA, "--gpus", "2", "--hardware", str(f["hw_incomplete"])),
     [r"missing field\(s\) \['name', 'peak_flops_per_s'", r"`base` preset"]),
    ("hardware value nonsensical", lambda f: plan_argv(LLAMA, "--gpus", "2", "--hardware", str(f["hw_negative"])),
     [r"hbm_capacity_bytes is -3\.0", r"needed bytes in"]),
    ("hardware unknown field", lambda f: plan_argv(LLAMA, "--gpus", "2", "--hardware", str(f["hw_unknown_field"])),
     [r"unknown field\(s\) \['hbm_bytes'\]", r"hbm_capacity_bytes"]),
    ("hardware file missing", lambda f: plan_argv(LLAMA, "--gpus", "2", "--hardware", "/no/such/hw.yaml"),
     [r"'/no/such/hw.yaml' does not exist", r"h100-sxm"]),
    ("unknown hardware name", lambda f: plan_argv(LLAMA, "--gpus", "2", "--hardware", "h900"),
     [r"'h900' is neither a preset nor a file", r"h100-sxm, h200"]),
    ("zero GPUs", lambda f: plan_argv(LLAMA, "--gpus", "0"), [r"--gpus must be a positive integer, got 0"]),
    ("negative GPUs", lambda f: plan_argv(LLAMA, "--gpus", "-4"), [r"--gpus must be a positive integer, got -4"]),
    ("absurd GPUs", lambda f: plan_argv(LLAMA, "--gpus", "1" + "0" * 20), [r"--gpus 1(0){20} is beyond"]),
    ("GPU count no mesh can factor", lambda f: plan_argv(LLAMA, "--gpus", "3", "--force", "layers.*.attention=tp"),
     [r"no mesh of 3 GPUs", r"batch 8 is not divisible by dp=3", r"q_heads=4 is not divisible by tp=3"]),
    ("zero batch", lambda f: plan_argv(LLAMA, "--gpus", "2", "--batch", "0"), [r"batch must be a positive integer, got 0"]),
    ("negative batch", lambda f: plan_argv(LLAMA, "--gpus", "2", "--batch", "-8"), [r"got -8"]),
    ("absurd batch", lambda f: plan_argv(LLAMA, "--gpus", "2", "--batch", "1" + "0" * 30),
     [r"--batch 1(0){30} is beyond", r"at most 16777216"]),
    ("zero new tokens", lambda f: plan_argv(LLAMA, "--gpus", "2", "--workload", "prefill", "--seq", "0"),
     [r"seq must be a positive integer, got 0"]),
    ("negative context", lambda f: plan_argv(LLAMA, "--gpus", "2", "--context", "-5"),
     [r"token count '-5' is negative"]),
    ("absurd context", lambda f: plan_argv(LLAMA, "--gpus", "2", "--context", "1" + "0" * 40),
     [r"--context 1(0){40} is beyond", r"2\*\*32"]),
    ("context not a number", lambda f: plan_argv(LLAMA, "--gpus", "2", "--context", "12q"),
     [r"token count '12q' is not a number"]),
    ("heads not divisible by forced tp", lambda f: plan_argv(LLAMA, "--gpus", "4", "--force", "layers.*.attention=tp(tp=4)"),
     [r"kv_heads=2 is not divisible by tp=4"]),
    ("heads not divisible by forced helix tpa", lambda f: plan_argv(LLAMA, "--gpus", "8", "--force", "layers.*.attention=helix(kvp=2,tpa=4)"),
     [r"mesh kvp=2×tp=4: block layers\.0\.attention .* kv_heads=2 is not divisible by tpa=4"]),
    ("training parameter forced on a decode plan", lambda f: plan_argv(LLAMA, "--gpus", "2", "--workload", "decode", "--force", "layers.*.mlp=tp(tp=2,zero=2)"),
     [r"sets zero, a training parameter, but the workload is decode", r"--workload train"]),
    ("model too big for the cluster", lambda f: plan_argv(LLAMA, "--model-arg", "preset=llama3-8b", "--gpus", "1", "--batch", "64", "--context", "128k"),
     [r"does not fit on 1 GPUs", r"needs \d+\.\d GiB per GPU; 80\.0 GiB available", r"At least ~\d+ GPUs are needed"]),
    ("output directory not writable", lambda f: plan_argv(LLAMA, "--gpus", "2", out="/proc/helixplan/out"),
     [r"--out '/proc/helixplan/out' cannot be written"]),
    ("output path is a file", lambda f: plan_argv(LLAMA, "--gpus", "2", out=str(EXAMPLES / "llama.py")),
     [r"cannot be written"]),
    ("non-positive solver time limit", lambda f: plan_argv(LLAMA, "--gpus", "2", "--time-limit", "0"),
     [r"--time-limit must be a positive number of seconds, got 0"]),
]


@pytest.mark.parametrize("argv_of,patterns", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_paragraph_and_exit_2(argv_of, patterns, bad_files, capsys):
    code, err = run_cli(argv_of(bad_files), capsys)
    assert code == 2, err
    assert "Traceback" not in err
    message = " ".join(err.split())
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    # One paragraph: the error line(s) only (argparse adds its usage lines above its own).
    assert "error:" in err and len(err.strip().splitlines()) <= 16


def test_unreadable_model_file(bad_files, capsys, monkeypatch):
    """A file the user cannot read (as root, chmod 000 does not stop reads, so the read
    itself is made to fail)."""
    target = bad_files["unreadable"]
    real = Path.read_bytes

    def read_bytes(self):
        if self == target:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    code, err = run_cli(plan_argv(str(target), "--gpus", "2"), capsys)
    assert code == 2 and "Traceback" not in err
    assert "cannot be read (Permission denied)" in " ".join(err.split())


def test_bad_inputs_through_a_real_process():
    """The same promise from a fresh interpreter: stderr is the message, nothing else (no
    torch warnings or partial graphs ahead of it), and the exit status is 2."""
    argv = plan_argv(str(FIXTURES / "branch_in_layer.py"), "--gpus", "2")
    r = subprocess.run([sys.executable, "-m", "planner", *argv], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and "'layers.1.gate'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "def forward" not in r.stderr
