"""Model input: a Python model file or a Hugging Face config, built on the meta device.

A model file defines `build_model(**size) -> nn.Module` and
`example_inputs(workload, batch, seq, context, ...) -> dict` (see README). `hf:PATH` names a
transformers `config.json`; the model is built from the config with no weights and adapted
to the forward convention for tracing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ir.errors import InputError, ModelLoadError

if TYPE_CHECKING:  # torch is imported only to build a model: a cached plan never needs it
    import torch

TRACE_BATCH, TRACE_SEQ, TRACE_CONTEXT = 3, 5, 7  # >= 2 so each stays symbolic; distinct


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "file" | "hf"
    path: str
    model_args: dict[str, str] = field(default_factory=dict)
    content_hash: str = ""

    @property
    def display(self) -> str:
        return f"hf:{self.path}" if self.kind == "hf" else self.path

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "model_args": dict(sorted(self.model_args.items())),
            "sha256": self.content_hash,
        }


def parse_model_args(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(
                f"--model-arg {item!r} is not KEY=VALUE; write e.g. --model-arg preset=llama3-8b"
            )
        out[key.strip()] = value.strip()
    return out


def resolve_source(spec: str, model_args: dict[str, str] | None = None) -> ModelSource:
    model_args = dict(model_args or {})
    if spec.startswith("hf:"):
        path = Path(spec[3:])
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ModelLoadError(
                f"Hugging Face config {spec!r} not found; give hf:PATH/config.json (or a "
                "directory holding config.json) of a causal LM"
            )
        if model_args:
            raise InputError(
                "--model-arg applies to model files only; edit the config.json for hf: models"
            )
        return ModelSource("hf", str(path), {}, _sha256(path))
    path = Path(spec)
    if path.is_dir():
        raise ModelLoadError(
            f"model file {spec!r} is a directory; give a Python file defining build_model() "
            "and example_inputs(), or hf:DIR for a Hugging Face config directory"
        )
    if not path.is_file():
        raise ModelLoadError(
            f"model file {spec!r} does not exist; give a Python file defining build_model() "
            "and example_inputs(), or hf:PATH/config.json for a Hugging Face model"
        )
    if path.suffix != ".py":
        raise ModelLoadError(
            f"model file {spec!r} is not a .py file; for a Hugging Face config write hf:{spec}"
        )
    return ModelSource("file", str(path), model_args, _file_hash(path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(_read_bytes(path)).hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(
            f"model file {str(path)!r} cannot be read ({exc.strerror or exc}); check its "
            "permissions (`ls -l`) or copy it somewhere readable"
        ) from None


def _file_hash(path: Path) -> str:
    """The model file's sha256 or, when it imports modules that live beside it, the hash of
    its content and theirs: editing a local helper module must not serve a stale trace."""
    deps = local_imports(path)
    if not deps:
        return _sha256(path)
    h = hashlib.sha256(path.read_bytes())
    for dep in deps:
        h.update(b"\0" + str(dep.relative_to(path.parent.resolve())).encode() + b"\0")
        h.update(dep.read_bytes())
    return h.hexdigest()


def local_imports(path: Path) -> list[Path]:
    """Python files beside `path` (or in packages beside it) that it imports, directly or
    through each other, found by reading the import statements (nothing is executed)."""
    import ast

    root = path.parent.resolve()
    found: set[Path] = set()
    todo = [path.resolve()]
    while todo:
        current = todo.pop()
        try:
            tree = ast.parse(current.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue  # importing the file reports it properly
        names: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importing file's folder
                    base = ".".join(current.parent.relative_to(root).parts + (base,)).strip(".")
                names += [base] + [f"{base}.{a.name}".strip(".") for a in node.names]
        for name in names:
            parts = [p for p in name.split(".") if p]
            for i in range(1, len(parts) + 1):
                stem = root.joinpath(*parts[:i])
                for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
                    if candidate.is_file() and candidate.resolve() not in found:
                        if candidate.resolve() != path.resolve():
                            found.add(candidate.resolve())
                            todo.append(candidate.resolve())
    return sorted(found)


def load_module_file(path: str) -> ModuleType:
    # Keyed by path and content: an edited file is imported afresh, never served stale.
    key = str(Path(path).resolve()).encode() + _read_bytes(Path(path))
    name = "helixplan_user_model_" + hashlib.sha1(key).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import model file {path!r}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:
        del sys.modules[name]
        raise ModelLoadError(
            f"importing model file {path!r} failed with {type(exc).__name__}: {exc}. Fix the "
            f"file so that `python {path}` imports cleanly"
        ) from exc
    for fn in ("build_model", "example_inputs"):
        if not callable(getattr(mod, fn, None)):
            raise ModelLoadError(
                f"model file {path!r} defines no {fn}(); a model file must define "
                "build_model(**size) -> nn.Module and example_inputs(workload, batch, seq, "
                "context, model=None) -> dict (see README, 'Model input')"
            )
    return mod


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def build_model(source: ModelSource, *, device: str | torch.device = "meta") -> torch.nn.Module:
    """Build the model (on the meta device by default: no memory, no init)."""
    import torch

    if source.kind == "hf":
        return _build_hf(source, device)
    mod = load_module_file(source.path)
    kwargs = {k: _coerce(v) for k, v in source.model_args.items()}
    try:
        with torch.device(device):
            model = mod.build_model(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"build_model({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) in "
            f"{source.path} rejected the size arguments: {exc}. Pass sizes the file accepts "
            "with --model-arg KEY=VALUE"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(
            f"build_model() in {source.path} returned {type(model).__name__}, not an nn.Module"
        )
    return model.eval()


def _build_hf(source: ModelSource, device) -> torch.nn.Module:
    import torch

    from planner.hf_adapter import HFAdapter

    try:
        import transformers
    except ImportError as exc:
        raise ModelLoadError(
            "hf: models need the transformers extra: pip install 'helixplan[hf]'"
        ) from exc
    try:
        raw = json.loads(Path(source.path).read_text())
        model_type = raw.pop("model_type")
        config = transformers.AutoConfig.for_model(model_type, **raw)
    except Exception as exc:
        raise ModelLoadError(
            f"transformers could not read {source.path}: {exc}. Give the config.json of a "
            "causal LM (with model_type and architectures)"
        ) from exc
    try:
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except Exception as exc:
        raise ModelLoadError(
            f"transformers could not build a causal LM from {source.path} "
            f"(model_type {getattr(config, 'model_type', '?')!r}): {exc}"
        ) from exc
    return HFAdapter(model).eval()


def example_kwargs(
    source: ModelSource,
    model: torch.nn.Module,
    *,
    workload: str,
    batch: int,
    seq: int,
    context: int,
    device: str | torch.device = "meta",
) -> dict[str, Any]:
    import torch

    if source.kind == "hf":
        from planner.hf_model import example_inputs

        return example_inputs(workload, batch, seq, context, model=model, device=device)
    mod = load_module_file(source.path)
    fn = mod.example_inputs
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    if "model" in params:
        kwargs["model"] = model
    if "device" in params:
        kwargs["device"] = device
    try:
        out = fn(workload, batch, seq, context, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"example_inputs({workload!r}, {batch}, {seq}, {context}) in {source.path} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, dict) or "input_ids" not in out:
        raise ModelLoadError(
            f"example_inputs() in {source.path} must return a dict of forward's keyword "
            f"arguments including input_ids; it returned {type(out).__name__}"
        )
    return torch.utils._pytree.tree_map(
        lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, out
    )

