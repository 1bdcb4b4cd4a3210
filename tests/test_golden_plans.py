"""Golden plans: the planner's output for a few fixed inputs, byte for byte.

Each case runs `helixplan plan` in-process from the repository root and compares plan.json
(and run_plan.py where the case writes one) with the files under tests/golden/CASE/. A
change to the cost model, the solver set-up, the lowering or the program text shows up here
as a diff — intended changes are recorded by regenerating the files and committing them with
the change that caused them:

    make golden        # HELIXPLAN_UPDATE_GOLDEN=1 pytest tests/test_golden_plans.py

so a reviewer sees exactly which plans and programs a commit changed.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from planner.cli import main
from tests.conftest import ROOT

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("HELIXPLAN_UPDATE_GOLDEN") == "1"

# name -> `helixplan plan` arguments (model path relative to the repository root, as plan.json
# records it). Two tiny models with their programs (the program text is mostly the shared
# runtime, so two suffice); full-size models as plans only — at tiny sizes replication wins and
# the interesting choices (Helix, EP, CP, per-block TP, ZeRO levels) only show at scale.
CASES: dict[str, list[str]] = {
    "llama-helix-4": ["examples/llama.py", "--gpus", "4", "--hardware", "h100-sxm",
                      "--workload", "decode", "--batch", "8", "--context", "64k",
                      "--force", "layers.*.attention=helix(kvp=2,tpa=2,hopb=2)"],
    "llama-train-4": ["examples/llama.py", "--gpus", "4", "--hardware", "h100-sxm",
                      "--workload", "train", "--batch", "8", "--seq", "256",
                      "--force", "layers.*.attention=tp(tp=2)", "--force", "layers.*.mlp=tp_sp(tp=2)",
                      "--force", "lm_head=vocab(tp=2)"],
    "llama3-8b-decode-64": ["examples/llama.py", "--model-arg", "preset=llama3-8b", "--gpus", "64",
                            "--hardware", "h200", "--workload", "decode", "--batch", "64",
                            "--context", "32k", "--no-program"],
    "llama3-8b-prefill-16": ["examples/llama.py", "--model-arg", "preset=llama3-8b", "--gpus", "16",
                             "--hardware", "h100-sxm", "--workload", "prefill", "--batch", "1",
                             "--seq", "128k", "--no-program"],
    "llama3-8b-train-16": ["examples/llama.py", "--model-arg", "preset=llama3-8b", "--gpus", "16",
                           "--hardware", "h100-sxm", "--workload", "train", "--batch", "32",
                           "--seq", "4096", "--no-program"],
    "mixtral-8x7b-prefill-16": ["examples/mixtral.py", "--model-arg", "preset=mixtral-8x7b",
                                "--gpus", "16", "--hardware", "h100-sxm", "--workload", "prefill",
                                "--batch", "8", "--seq", "4096", "--no-program"],
    "deepseek-v3-decode-64": ["examples/deepseek.py", "--model-arg", "preset=deepseek-v3", "--gpus", "64",
                              "--hardware", "h200", "--workload", "decode", "--batch", "128",
                              "--context", "64k", "--no-program"],
}


def _portable(text: str) -> str:
    """The program imports the model file by its absolute path; the checkout's location is
    not part of the plan."""
    return text.replace(f'"{ROOT}/', '"<checkout>/')


def _plan(case: str, out: Path, monkeypatch) -> list[str]:
    monkeypatch.chdir(ROOT)
    code = main(["plan", *CASES[case], "--out", str(out)])
    assert code == 0, f"helixplan plan {' '.join(CASES[case])} exited {code}"
    return [name for name in ("plan.json", "run_plan.py") if (out / name).exists()]


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_matches_its_golden_files(case, tmp_path, monkeypatch, capsys):
    written = _plan(case, tmp_path, monkeypatch)
    capsys.readouterr()
    want_dir = GOLDEN / case
    if UPDATE:
        want_dir.mkdir(parents=True, exist_ok=True)
        for stale in want_dir.iterdir():
            stale.unlink()
        for name in written:
            (want_dir / name).write_text(_portable((tmp_path / name).read_text()))
        return
    expected = sorted(p.name for p in want_dir.iterdir()) if want_dir.is_dir() else []
    assert sorted(written) == expected, (
        f"{case}: wrote {sorted(written)}, golden has {expected}; run `make golden` if intended"
    )
    for name in written:
        got, want = _portable((tmp_path / name).read_text()), (want_dir / name).read_text()
        if got != want:
            diff = "".join(list(difflib.unified_diff(
                want.splitlines(keepends=True), got.splitlines(keepends=True),
                f"golden/{case}/{name}", f"new/{case}/{name}",
            ))[:80])
            pytest.fail(f"{case}/{name} differs from its golden file (run `make golden` and commit "
                        f"the new files if the change is intended):\n{diff}")


def test_golden_directory_has_no_stray_cases():
    """A case removed from CASES must take its files with it."""
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == sorted(CASES)
