"""Check a safetensors checkpoint directory against a generated program before launching it.

`run_plan.py --checkpoint DIR` reads each rank's weight slices straight from the files
(`safe_open(...).get_slice(name)[index]`). A tensor that is missing or has another shape
would fail on every rank after torchrun started, or worse, slice the wrong rows. This reads
only the files' headers (names, shapes) and refuses such a checkpoint with one message
naming the tensor and both shapes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ir.errors import InputError


class CheckpointError(InputError):
    """A checkpoint directory that does not fit the planned model."""


def checkpoint_shapes(directory: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape over every `*.safetensors` file in `directory` (headers only)."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as exc:
        raise CheckpointError(
            "reading a checkpoint needs safetensors: pip install 'helixplan[hf]'"
        ) from exc
    path = Path(directory)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds no *.safetensors files; give the directory the "
            "model's weights were saved to (safetensors.torch.save_file or save_pretrained)"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    with contextlib.ExitStack() as stack:
        for f in files:
            try:
                handle = stack.enter_context(safe_open(str(f), framework="pt", device="cpu"))
            except (OSError, SafetensorError) as exc:
                raise CheckpointError(f"checkpoint file {str(f)!r} cannot be read: {exc}") from None
            for name in handle.keys():
                shapes[name] = tuple(int(d) for d in handle.get_slice(name).get_shape())
    return shapes


def check_checkpoint(directory: str | Path, weights: list[dict[str, Any]]) -> None:
    """Raise `CheckpointError` unless every weight the program reads (`WEIGHTS` of
    run_plan.py: fqn, aliases, global shape) is in the checkpoint with its shape."""
    shapes = checkpoint_shapes(directory)
    for spec in weights:
        if not spec.get("persistent", True):
            continue  # a buffer the model computes, never saved
        names = (spec["fqn"], *spec.get("aliases", ()))
        name = next((n for n in names if n in shapes), None)
        want = tuple(int(d) for d in spec["shape"])
        if name is None:
            raise CheckpointError(
                f"checkpoint {str(directory)!r} has no tensor {spec['fqn']!r} (shape "
                f"{list(want)}) that the model reads; it holds {len(shapes)} tensors. Save the "
                "model's state_dict with its own parameter names"
            )
        if shapes[name] != want:
            raise CheckpointError(
                f"checkpoint tensor {name!r} has shape {list(shapes[name])}, but the model "
                f"needs {list(want)}; the checkpoint is for another model size or config. Plan "
                "the model the checkpoint was saved from, or give its checkpoint"
            )


def program_weights(program: str | Path) -> list[dict[str, Any]]:
    """The `WEIGHTS` table of a generated run_plan.py (imported, nothing run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"helixplan_weights_{abs(hash(str(program)))}", program)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.WEIGHTS)
