"""helixplan as a library: plan a model you already hold in Python.

    import planner
    plan = planner.plan(model, example_inputs, hardware="h100-sxm", gpus=8, workload="decode")
    plan.save("build/plan.json")
    print(planner.explain(plan))

`example_inputs` are forward's keyword arguments under the README's convention (batch, new
tokens and cache length at least 2 each, so they stay symbolic). The model may live on the
meta device. The CLI (`helixplan ...`, `python -m planner ...`) wraps the same pipeline.
"""

from __future__ import annotations

from typing import Any

from ir.plan import Plan
from ir.workload import Workload

__all__ = ["Plan", "Workload", "backend", "explain", "parallelize", "plan"]


def plan(
    module: Any,
    example_inputs: dict[str, Any],
    *,
    hardware: Any = "h100-sxm",
    gpus: int,
    workload: Workload | str = "decode",
    batch: int | None = None,
    seq: int | None = None,
    context: int | None = None,
    force: list[str] | None = None,
    strategies: frozenset[str] | None = None,
    per_layer: bool = False,
) -> Plan:
    """Trace `module(**example_inputs)` and return the optimal plan for `gpus` GPUs.

    `workload` is a `Workload`, or a kind ("decode", "prefill", "train") completed by
    `batch`/`seq`/`context` (defaults as the CLI's)."""
    from planner.api import make_plan
    from planner.commands.plan import DEFAULTS
    from planner.frontend import load_module_graph

    if isinstance(workload, str):
        d = DEFAULTS.get(workload)
        if d is None:
            from ir.errors import InputError

            raise InputError(f"workload {workload!r} is unknown; choose decode, prefill or train")
        workload = Workload(
            kind=workload,
            batch=batch if batch is not None else d["batch"],
            seq=seq if seq is not None else d["seq"],
            context=context if context is not None else d["context"],
        )
    module, example_inputs = _as_planner_module(module, example_inputs)
    loaded = load_module_graph(module, example_inputs)
    run = make_plan(loaded, hardware=hardware, gpus=gpus, workload=workload, force=force,
                    strategies=strategies, per_layer=per_layer)
    from planner.parallel import remember_graph

    remember_graph(run.plan, loaded.graph)
    return run.plan


def parallelize(module: Any, plan: Plan, example_inputs: dict[str, Any] | None = None) -> Any:
    """`module` sharded by `plan`, running in the current process group (see
    `planner.parallel`)."""
    from planner.parallel import parallelize as _parallelize

    if example_inputs is not None:
        module, example_inputs = _as_planner_module(module, example_inputs)
    else:
        module, _ = _as_planner_module(module, {})
    return _parallelize(module, plan, example_inputs)


def _as_planner_module(module: Any, example_inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A transformers causal LM is planned through `planner.hf_model.HFCausalLM` (the
    generated program's model too): a prefill from position 0 over `input_ids`, parameter
    names unchanged, returning `(logits, new_kv)` (the prompt's K/V per layer)."""
    import sys

    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(module, transformers.PreTrainedModel):
        return module, example_inputs
    from planner.hf_model import HFCausalLM

    extra = sorted(set(example_inputs) - {"input_ids"})
    if extra:
        from ir.errors import InputError

        raise InputError(
            f"a transformers model is planned as a prefill from position 0 over input_ids "
            f"only; example_inputs also has {extra}. Pass {{'input_ids': ids}}"
        )
    return HFCausalLM(module), example_inputs


def backend(**options: Any) -> Any:
    """A `torch.compile` backend that plans each captured graph and runs it sharded on the
    current process group (see `planner.compile_backend`)."""
    from planner.compile_backend import PlannerBackend

    return PlannerBackend(**options)


def explain(p: Plan) -> str:
    """The `helixplan explain` text for a plan."""
    from planner.report import explain_text

    return explain_text(p)
