"""helixplan as a library, inside torchrun: plan a model, save and load the plan, run it
sharded with `planner.parallelize`, and let `torch.compile` plan and shard it through
`planner.backend`; each result is compared with the unsharded model.

    torchrun --nproc-per-node 2 examples/library.py [OUT_DIR]

Every rank prints one JSON line with the max abs error of each path (tests/test_api_torchrun.py
launches this file and checks them).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
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

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="helixplan-library-"))
    path = out / f"plan{rank}.json"
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

    # A transformers model as it is: planned and run against its own logits.
    import transformers

    from planner.hf_model import load_config

    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(
        load_config(ROOT / "tests" / "configs" / "hf" / "llama_tiny.json")).eval()
    ids = inputs["input_ids"] % hf.config.vocab_size
    with torch.no_grad():
        hf_want = hf(input_ids=ids).logits
    hf_plan = planner.plan(hf, {"input_ids": ids}, hardware="h100-sxm", gpus=2, workload="prefill",
                           batch=2, seq=8, force=FORCE)
    hf_sharded = planner.parallelize(hf, hf_plan)
    result["hf_err"] = max_err(hf_sharded(input_ids=ids)[0], hf_want)
    result["hf_strategies"] = sorted({b.strategy for b in hf_plan.blocks})
    result["hf_ref_scale"] = max(1.0, hf_want.abs().max().item())
    # One write per line: print's separate newline write let two ranks' lines interleave.
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
