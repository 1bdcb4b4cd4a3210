"""`torch.compile(model, backend=planner.backend(...))`: plan the captured graph, run it sharded.

Dynamo hands the backend an FX graph over torch-level calls whose placeholders are the
model's parameters and the user's inputs. `ir.capture.replay_module` rebuilds a module from
it (parameters under their original names, ops keeping the module paths Dynamo recorded)
and the backend hands that module to the ordinary pipeline: `ir.capture` re-exports it
(symbolic B, T, L), the passes recognize its blocks, the ILP plans it for the current
process group, and `planner.parallel` runs the generated rank program. Each distinct
captured graph (a new input shape recompiles under `dynamic=False`) is planned once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from ir.capture import replay_module
from ir.errors import InputError
from ir.plan import Plan
from ir.workload import Workload


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
