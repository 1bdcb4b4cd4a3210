"""Weights from a safetensors checkpoint directory: the generated program reads each rank's
slices from the files and matches the reference loaded from the same files; a checkpoint
that does not fit the model is refused before any rank starts (exit 2, tensor and shapes)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ir.workload import Workload
from planner.api import make_plan, write_outputs
from planner.cli import main
from planner.model_source import load_module_file
from tests.conftest import EXAMPLES

FORCE = ["layers.*.attention=tp(tp=2)", "layers.*.mlp=tp(tp=2)", "lm_head=vocab(tp=2)"]


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    from tests.conftest import loaded

    out = tmp_path_factory.mktemp("plan")
    run = make_plan(loaded(str(EXAMPLES / "llama.py")), hardware="h100-sxm", gpus=2,
                    workload=Workload(kind="prefill", batch=2, seq=8, context=0), force=FORCE)
    write_outputs(run, out)
    return out


def save_random_weights(directory, *, seed: int, edit=None) -> dict[str, torch.Tensor]:
    """The tiny Llama's state with random weights (not the program's seed-0 init), split
    over two files as a sharded checkpoint is."""
    llama = load_module_file(str(EXAMPLES / "llama.py"))
    torch.manual_seed(seed)
    state = {k: v.detach().clone().contiguous() for k, v in llama.build_model().state_dict().items()}
    if edit:
        edit(state)
    names = sorted(state)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: state[k] for k in names[: len(names) // 2]}, str(directory / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in names[len(names) // 2 :]}, str(directory / "model-00002-of-00002.safetensors"))
    return state


def test_generated_program_loads_its_shards_from_safetensors(plan_dir, tmp_path, capsys):
    save_random_weights(tmp_path / "ckpt", seed=123)
    code = main(["verify", str(plan_dir), "--nproc", "2", "--checkpoint", str(tmp_path / "ckpt"),
                 "--in-process", "--batch", "2", "--seq", "8"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["ok"] and summary["max_abs_err"] <= 1e-4 * summary["ref_scale"]


def test_generated_program_on_a_checkpoint_differs_from_its_own_init(plan_dir, tmp_path):
    """The check above can fail: the program's default (seed 0) weights are not the
    checkpoint's, so a program ignoring --checkpoint would not match the loaded reference."""
    state = save_random_weights(tmp_path / "ckpt", seed=123)
    llama = load_module_file(str(EXAMPLES / "llama.py"))
    torch.manual_seed(0)
    init = llama.build_model().state_dict()
    assert any(not torch.equal(init[k], state[k]) for k in state)


def test_checkpoint_with_wrong_shape_is_refused_before_launch(plan_dir, tmp_path, capsys):
    def shrink(state):
        key = "model.layers.0.mlp.up_proj.weight"
        state[key] = state[key][:-8].contiguous()

    state = save_random_weights(tmp_path / "bad", seed=1, edit=shrink)
    rows, cols = state["model.layers.0.mlp.up_proj.weight"].shape
    code = main(["verify", str(plan_dir), "--nproc", "2", "--checkpoint", str(tmp_path / "bad"),
                 "--in-process"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model.layers.0.mlp.up_proj.weight" in err
    assert f"[{rows}, {cols}]" in err and f"[{rows + 8}, {cols}]" in err
    assert "Traceback" not in err


def test_checkpoint_missing_a_tensor_is_refused(plan_dir, tmp_path, capsys):
    save_random_weights(tmp_path / "bad", seed=1, edit=lambda s: s.pop("model.norm.weight"))
    code = main(["verify", str(plan_dir), "--nproc", "2", "--checkpoint", str(tmp_path / "bad"),
                 "--in-process"])
    assert code == 2
    assert "'model.norm.weight'" in capsys.readouterr().err
