"""Baseline for benchmarks/codegen_overhead.py: a model file's Llama parallelized with
`torch.distributed.tensor.parallel.parallelize_module` (Megatron TP on a 1-D DeviceMesh:
ColwiseParallel for q/k/v/gate/up, RowwiseParallel for o/down; embedding, norms and LM head
replicated), driven exactly like a generated `run_plan.py` drives decode:

* weights: `build_model(**model_args)` after `torch.manual_seed(seed)` (the same init);
* tokens: `example_inputs("prefill", batch, prompt + steps, 0)["input_ids"]`;
* a KV cache per layer preallocated for `prompt + steps` tokens, in the TP layout
  `[B, kv_heads / tp, capacity, head_dim]`; each step passes the whole cache as `past_kv`
  with `cache_lens = start` (the model masks the unwritten slots) and writes the step's new
  K/V into it at `start`;
* timed per step: building the step's inputs, the forward, writing the new K/V.

Launch: torchrun --nproc-per-node 4 benchmarks/_dtensor_tp.py --model-file examples/llama.py \
    --model-arg hidden=1024 ... --batch 8 --context 128 --steps 30 [--check]

Every rank prints one JSON line like the generated program's (`rank`, `step_seconds`, ...);
with --check rank 0 also compares the prefill logits and the first decode step's logits
(a warm-up step) with the single-process model: `ok`, `max_abs_err`, `ref_scale`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-file", required=True)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=128, help="prompt length before decoding")
    p.add_argument("--steps", type=int, default=30, help="decode steps (all timed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="compare with the single-process model on rank 0")
    return p.parse_args(argv)


def load_module(path):
    spec = importlib.util.spec_from_file_location("dtensor_tp_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tp_model(module, model_args, seed, mesh):
    torch.manual_seed(seed)
    model = module.build_model(**model_args).eval()
    tp = mesh.size()
    for layer in model.model.layers:
        attn = layer.self_attn
        parallelize_module(attn, mesh, {
            "q_proj": ColwiseParallel(), "k_proj": ColwiseParallel(), "v_proj": ColwiseParallel(),
            "o_proj": RowwiseParallel(),
        })
        if attn.num_heads % tp or attn.num_kv_heads % tp:
            raise SystemExit(f"tp={tp} must divide heads {attn.num_heads} and kv heads {attn.num_kv_heads}")
        # Column-parallel q/k/v hand back local shards: the module reshapes into its own heads.
        attn.num_heads //= tp
        attn.num_kv_heads //= tp
        parallelize_module(layer.mlp, mesh, {
            "gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(), "down_proj": RowwiseParallel(),
        })
    return model


def max_err(got, want):
    err = (got.double() - want.double()).abs().max().item()
    return err, max(1.0, want.abs().max().item())


@torch.no_grad()
def main(argv=None):
    args = parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    module = load_module(args.model_file)
    model_args = dict(a.split("=", 1) for a in args.model_arg)
    model = tp_model(module, model_args, args.seed, mesh)
    ref = None
    if args.check and rank == 0:
        torch.manual_seed(args.seed)
        ref = module.build_model(**model_args).eval()
    cfg = model.config
    batch, prompt, steps = args.batch, args.context, args.steps
    ids = module.example_inputs("prefill", batch, prompt + steps, 0, model=model)["input_ids"]
    capacity = prompt + steps
    shape = (batch, cfg.num_key_value_heads // world, capacity, cfg.head_dim)
    caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.num_hidden_layers)]

    def write(new, start, count):
        for (k, v), (nk, nv) in zip(caches, new, strict=True):
            k.narrow(2, start, count).copy_(nk)
            v.narrow(2, start, count).copy_(nv)

    check = {"ok": True, "max_abs_err": 0.0, "ref_scale": 1.0}

    def compare(got, want):
        err, scale = max_err(got, want)
        if err / scale >= check["max_abs_err"] / check["ref_scale"]:
            check.update(max_abs_err=err, ref_scale=scale)
        check["ok"] = check["ok"] and err <= 1e-4 * scale

    t0 = time.perf_counter()
    positions = torch.arange(prompt).expand(batch, prompt)
    logits, new = model(input_ids=ids[:, :prompt], position_ids=positions)
    write(new, 0, prompt)
    prefill_seconds = time.perf_counter() - t0
    ref_cache = None
    if ref is not None:
        want, ref_cache = ref(input_ids=ids[:, :prompt], position_ids=positions)
        compare(logits, want)

    seconds = []
    for s in range(steps):
        start = prompt + s
        tokens = ids[:, start : start + 1]
        t0 = time.perf_counter()
        position_ids = (start + torch.arange(1)).expand(batch, 1).contiguous()
        cache_lens = torch.full((batch,), start, dtype=torch.long)
        logits, new = model(input_ids=tokens, position_ids=position_ids, past_kv=tuple(caches), cache_lens=cache_lens)
        write(new, start, 1)
        seconds.append(time.perf_counter() - t0)
        if ref is not None and s == 0:  # the first step is a warm-up step for the benchmark
            want, _ = ref(input_ids=tokens, position_ids=position_ids, past_kv=ref_cache,
                          cache_lens=torch.full((batch,), prompt, dtype=torch.long))
            compare(logits, want)

    out = {
        "rank": rank, "world_size": world, "impl": "dtensor_parallelize_module", "workload": "decode",
        "batch": batch, "step_seconds": seconds, "prefill_seconds": prefill_seconds,
        "param_bytes": sum(p.to_local().numel() * 4 if hasattr(p, "to_local") else p.numel() * 4
                           for p in model.parameters()),
    }
    if ref is not None:
        out.update(check)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    dist.barrier()
    dist.destroy_process_group()
    return 0 if out.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
