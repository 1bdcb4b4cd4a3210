"""Run under torchrun (gloo): planner.parallelize and the torch.compile backend against the
unsharded module. Every rank prints one JSON line; rank 0's carries the comparisons."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import planner  # noqa: E402
from planner.model_source import load_module_file  # noqa: E402

FORCE = ["layers.*.attention=tp(tp=2)", "layers.*.mlp=tp(tp=2)", "lm_head=vocab(tp=2)"]


def max_err(got, want) -> float:
    leaves = zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want), strict=True)
    return max((a.double() - b.double()).abs().max().item() for a, b in leaves)


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    llama = load_module_file(str(ROOT / "examples" / "llama.py"))
    torch.manual_seed(0)
    model = llama.build_model().eval()
    inputs = llama.example_inputs("prefill", 2, 8, 0, model=model)
    with torch.no_grad():
        want = model(**inputs)
    result: dict = {"rank": rank}

    plan = planner.plan(model, inputs, hardware="h100-sxm", gpus=2, workload="prefill",
                        batch=2, seq=8, force=FORCE)
    sharded = planner.parallelize(model, plan)
    result["parallelize_err"] = max_err(sharded(**inputs), want)
    result["strategies"] = sorted({b.strategy for b in plan.blocks})
    result["local_param_bytes"] = sharded.local_param_bytes
    result["full_param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())

    path = Path(sys.argv[1]) / f"plan{rank}.json"
    plan.save(path)
    loaded = planner.Plan.load(path)
    again = planner.parallelize(model, loaded, example_inputs=inputs)
    result["loaded_plan_err"] = max_err(again(**inputs), want)

    backend = planner.backend(hardware="h100-sxm", workload="prefill", force=FORCE)
    compiled = torch.compile(model, backend=backend, dynamic=False)
    got = compiled(**inputs)
    result["compile_err"] = max_err(got, want)
    result["compile_plans"] = len(backend.plans)
    result["compile_strategies"] = sorted({b.strategy for p in backend.plans for b in p.blocks})
    result["ref_scale"] = max(1.0, want[0].abs().max().item())
    print(json.dumps(result), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
