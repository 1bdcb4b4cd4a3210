"""Run a plan inside the current process group: `planner.parallelize(module, plan)`.

The sharded module is the generated program itself: the plan is lowered and rendered to the
same `run_plan.py` text that `helixplan plan` writes, imported as a Python module, and its
functions do the work (`MeshGroups` builds the process groups, `weights_from_state` keeps
this rank's weight shards, `forward` runs the rank program, `to_local`/`to_global` move
tensors between the caller's global view and the plan's layouts). There is no second
executor to keep in step with the templates.

The returned module takes `module`'s keyword inputs as global tensors (every rank passes the
same values, as under torchrun with one seed), slices each to this rank's piece, runs the
rank program and all-gathers the outputs, returning them in `module`'s own output structure.
It is for inference: forward runs under `torch.no_grad()`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree

from ir.errors import InputError
from ir.graph import Graph
from ir.plan import Plan

# Plans made by `planner.plan` in this process, with the graph they were planned from (so
# `parallelize(module, plan)` needs no second trace). Keyed by id, checked by a weak ref.
_PLANNED: dict[int, tuple[weakref.ref, Graph]] = {}
_IMPORT_LOCK = threading.Lock()


def remember_graph(plan: Plan, graph: Graph) -> None:
    key = id(plan)
    _PLANNED[key] = (weakref.ref(plan, lambda _ref: _PLANNED.pop(key, None)), graph)


def planned_graph(plan: Plan) -> Graph | None:
    entry = _PLANNED.get(id(plan))
    if entry is None or entry[0]() is not plan:
        return None
    return entry[1]


def program_module(graph: Graph, plan: Plan) -> ModuleType:
    """Lower `plan` over `graph`, render `run_plan.py` and import it (once per text)."""
    from codegen import build_context, render_program
    from passes.lower import lower

    source = graph.meta.get("source") or {}
    context = build_context(lower(graph, plan), plan, model_file=str(source.get("path", "model.py")))
    text = render_program(context)
    name = "helixplan_program_" + hashlib.sha256(text.encode()).hexdigest()[:16]
    # Ranks may be threads of one process (tests): one imports, the others wait for it.
    with _IMPORT_LOCK:
        if name in sys.modules:
            return sys.modules[name]
        directory = Path(tempfile.mkdtemp(prefix="helixplan-program-"))
        path = directory / "run_plan.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module  # only once fully imported
        return module


def _require_group(plan: Plan) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise InputError(
            "parallelize runs the plan inside the current process group, and none is "
            "initialized; launch with torchrun and call torch.distributed.init_process_group() "
            "first"
        )
    world = dist.get_world_size()
    if world != plan.world_size:
        raise InputError(
            f"the plan runs on {plan.world_size} ranks (mesh {plan.mesh}); this process group "
            f"has {world}. Re-plan with gpus={world} or launch {plan.world_size} ranks"
        )
    return dist.get_rank(), world


class ParallelModule(torch.nn.Module):
    """One rank's share of a planned model: its weight shards and the rank program."""

    def __init__(self, program: ModuleType, state: dict[str, torch.Tensor], graph: Graph,
                 plan: Plan, device: torch.device):
        super().__init__()
        rank, _ = _require_group(plan)
        self.plan = plan
        self.program = program
        self.device = device
        self.pg = program.MeshGroups(rank)
        missing = [w["fqn"] for w in program.WEIGHTS
                   if not any(n in state for n in (w["fqn"], *w["aliases"]))]
        if missing:
            raise InputError(
                f"the module has no parameter {missing[0]!r} that the plan reads "
                f"({len(missing)} missing); parallelize the module the plan was made for"
            )
        self.local = program.weights_from_state(state, self.pg, device)
        self.weights = program.by_block(self.local)
        self._output_leaves = list(graph.meta.get("output_leaves") or [])
        tree = graph.meta.get("output_tree") or ""
        named = [leaf for leaf in self._output_leaves if leaf is not None]
        self._out_spec = pytree.treespec_loads(tree) if tree and named == list(graph.outputs) else None

    @property
    def local_param_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.local.values())

    @torch.no_grad()
    def forward(self, **kwargs: Any) -> Any:
        prog = self.program
        flat = prog.flatten_inputs(kwargs)
        local = {}
        for name, info in prog.INPUTS.items():
            if name not in flat:
                raise InputError(
                    f"input {name!r} is missing; the plan was traced with inputs "
                    f"{sorted(prog.INPUTS)}, got {sorted(flat)}"
                )
            if any(c["input"] == name and c["kvp_block"] for c in prog.CACHES):
                raise InputError(
                    f"input {name!r} is a Helix KV cache (split along the sequence over kvp); "
                    "a caller's global cache cannot be handed to it. Run Helix plans with the "
                    "generated run_plan.py, which keeps the cache in its own layout"
                )
            local[name] = prog.to_local(flat[name], info["shards"], self.pg).to(self.device)
        extra = {"device": self.device} if "device" in prog.FORWARD_ARGS else {}
        out = prog.forward(local, self.weights, self.pg, **extra)
        glob = {name: prog.to_global(out[name], info["shards"], self.pg) for name, info in prog.OUTPUTS.items()}
        if self._out_spec is None:
            return glob
        return pytree.tree_unflatten([None if leaf is None else glob[leaf] for leaf in self._output_leaves],
                                     self._out_spec)


def parallelize(module: torch.nn.Module, plan: Plan,
                example_inputs: dict[str, Any] | None = None) -> ParallelModule:
    """This rank's sharded `module` running `plan` in the current process group.

    Every rank calls it (it creates the plan's process groups). The graph comes from
    `planner.plan` when that made `plan` in this process, else from tracing
    `module(**example_inputs)`."""
    _require_group(plan)
    graph = planned_graph(plan)
    if graph is None:
        if example_inputs is None:
            raise InputError(
                "parallelize needs the traced graph of the module: pass the plan returned by "
                "planner.plan(module, ...) in this process, or example_inputs= (forward's "
                "keyword arguments, each dim at least 2)"
            )
        from planner.frontend import load_module_graph

        graph = load_module_graph(module, example_inputs).graph
    program = program_module(graph, plan)
    state = dict(module.named_buffers())
    state.update(module.state_dict())
    first = next(iter(state.values()), None)
    device = first.device if first is not None else torch.device("cpu")
    if device.type == "meta":
        raise InputError(
            "the module's weights are on the meta device; build it with real weights (or load "
            "a checkpoint) before parallelize"
        )
    return ParallelModule(program, state, graph, plan, device)
