"""`torch.compile(model, backend=planner.backend(...))`: plan the captured graph, run it sharded.

Dynamo hands the backend an FX graph over torch-level calls whose placeholders are the
model's parameters (named `l_self_modules_layers_modules_0_..._parameters_weight_`) and the
user's inputs (`l_input_ids_`). The backend rebuilds a module from it — parameters
registered under their original names, forward replaying the FX graph through an
`fx.Interpreter` with node metadata preserved, so every op keeps the `nn_module_stack`
Dynamo recorded — and hands that module to the ordinary pipeline: `ir.capture` re-exports it
(symbolic B, T, L), the passes recognize its blocks, the ILP plans it for the current
process group, and `planner.parallel` runs the generated rank program. Each distinct
captured graph (a new input shape recompiles under `dynamic=False`) is planned once.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.fx

from ir.errors import InputError
from ir.plan import Plan
from ir.workload import Workload

_PARAM_KINDS = ("_parameters_", "_buffers_")


def placeholder_target(name: str) -> tuple[str, str]:
    """("param" | "buffer", fqn) for a Dynamo parameter placeholder, else ("input", name):
    `l_self_modules_mlp_modules_up_proj_parameters_weight_` -> ("param", "mlp.up_proj.weight"),
    `l_input_ids_` -> ("input", "input_ids")."""
    body = name.removeprefix("l_").removesuffix("_")
    if body.startswith("self_"):
        for kind in _PARAM_KINDS:
            if kind in body:
                modules, attr = body.rsplit(kind, 1)
                modules = modules.removeprefix("self")
                path = modules.removeprefix("_modules_").split("_modules_") if modules else []
                return ("param" if kind == "_parameters_" else "buffer"), ".".join([*path, attr])
    return "input", body


class _Replay(torch.nn.Module):
    """The captured FX graph as a module with the model's parameter names."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]):
        super().__init__()
        self._gm = [gm]  # a list: not a submodule, so its (empty) state stays out of ours
        self.slots: list[tuple[str, str]] = []
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for node, value in zip(placeholders, example_inputs, strict=True):
            kind, target = placeholder_target(node.name)
            if not isinstance(value, torch.Tensor):
                raise InputError(
                    f"the captured graph takes a non-tensor input {node.name!r} ({value!r}): "
                    "Dynamo made a shape dynamic. Compile with torch.compile(..., dynamic=False) "
                    "so that each input shape is planned as its own graph"
                )
            if kind != "input":
                *path, attr = target.split(".")
                owner: torch.nn.Module = self
                for part in path:
                    if not hasattr(owner, part):
                        owner.add_module(part, torch.nn.Module())
                    owner = getattr(owner, part)
                if kind == "param":
                    param = value if isinstance(value, torch.nn.Parameter) else torch.nn.Parameter(value)
                    owner.register_parameter(attr, param)
                else:
                    owner.register_buffer(attr, value)
            self.slots.append((kind, target))
        for node in gm.graph.nodes:  # module paths as in the model, not Dynamo's L['self']...
            stack = node.meta.get("nn_module_stack")
            if stack:
                node.meta["nn_module_stack"] = {
                    key: (path.removeprefix("L['self']").removeprefix("."), cls)
                    for key, (path, cls) in stack.items()
                }

    @property
    def input_names(self) -> list[str]:
        return [target for kind, target in self.slots if kind == "input"]

    def replay(self, **inputs: torch.Tensor) -> Any:
        state = dict(self.named_parameters(remove_duplicate=False))
        state.update(self.named_buffers(remove_duplicate=False))
        args = [inputs[t] if kind == "input" else state[t] for kind, t in self.slots]
        with torch.fx.traceback.preserve_node_meta():
            return torch.fx.Interpreter(self._gm[0]).run(*args)


def replay_module(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> _Replay:
    """A module whose `forward(**inputs)` has the captured graph's input names as keyword
    arguments (torch.export reads forward's signature)."""
    probe = _Replay(gm, example_inputs)

    def forward(self: _Replay, **inputs: torch.Tensor) -> Any:
        return self.replay(**inputs)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    forward.__signature__ = inspect.Signature(
        [self_param] + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in probe.input_names]
    )
    cls = type("CapturedGraph", (_Replay,), {"forward": forward})
    return cls(gm, example_inputs)


@dataclass
class PlannerBackend:
    """The backend object `planner.backend(...)` returns. Options are `planner.plan`'s;
    `gpus` defaults to the current process group's size and `batch`/`seq` to the captured
    `input_ids` shape."""

    hardware: Any = "h100-sxm"
    workload: str = "prefill"
    gpus: int | None = None
    batch: int | None = None
    seq: int | None = None
    context: int = 0
    force: list[str] | None = None
    strategies: frozenset[str] | None = None
    plans: list[Plan] = field(default_factory=list)  # one per compiled graph, newest last

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        from planner.api import make_plan
        from planner.frontend import load_module_graph
        from planner.parallel import ParallelModule, _require_group, program_module

        if not dist.is_available() or not dist.is_initialized():
            raise InputError(
                "planner.backend runs the plan on the current process group, and none is "
                "initialized; launch with torchrun and call torch.distributed.init_process_group() "
                "before the first compiled call"
            )
        module = replay_module(gm, example_inputs)
        kwargs = {
            name: value
            for (kind, name), value in zip(module.slots, example_inputs, strict=True)
            if kind == "input"
        }
        if "input_ids" not in kwargs:
            raise InputError(
                f"the captured graph's inputs are {sorted(kwargs)}; planner.backend needs the "
                "README's forward convention (input_ids, position_ids, ...) passed by keyword"
            )
        loaded = load_module_graph(module, kwargs)
        batch, seq = kwargs["input_ids"].shape[:2]
        workload = Workload(
            kind=self.workload,
            batch=self.batch if self.batch is not None else int(batch),
            seq=self.seq if self.seq is not None else int(seq),
            context=self.context,
        )
        gpus = self.gpus if self.gpus is not None else dist.get_world_size()
        plan = make_plan(loaded, hardware=self.hardware, gpus=gpus, workload=workload,
                         force=self.force, strategies=self.strategies).plan
        # Every rank plans the same graph; rank 0's plan is the one all of them run.
        shared = [plan.to_json()]
        dist.broadcast_object_list(shared, src=0)
        plan = Plan.from_json(shared[0])
        _require_group(plan)
        self.plans.append(plan)
        program = program_module(loaded.graph, plan)
        state = dict(module.named_parameters(remove_duplicate=False))
        state.update(module.named_buffers(remove_duplicate=False))
        device = next(iter(state.values())).device
        sharded = ParallelModule(program, {k: v.detach() for k, v in state.items()},
                                 loaded.graph, plan, device)
        names = [name if kind == "input" else None for kind, name in module.slots]

        def run(*args: Any) -> Any:
            inputs = {n: a for n, a in zip(names, args, strict=True) if n is not None}
            return sharded(**inputs)

        return run
