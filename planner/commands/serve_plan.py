"""`helixplan serve-plan`: disaggregated prefill/decode pools against co-located chunked
prefill for a traffic mix, under TTFT and TTL SLOs, on a GPU budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from ir.errors import InputError
from planner.commands.common import add_model_arguments
from planner.model_source import parse_model_args, resolve_source

NAME = "serve-plan"
HELP = ("Size prefill and decode pools (disaggregated) and co-located chunked-prefill replicas "
        "for a traffic mix under TTFT/TTL SLOs; writes serve.json, pareto.png and the pool plans.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--hardware", default="h100-sxm", help="preset name or spec/profile file")
    p.add_argument("--gpus", type=int, required=True, help="GPU budget for all pools together")
    p.add_argument("--traffic", required=True, metavar="CSV",
                   help="requests, one per row: prompt_tokens,output_tokens")
    p.add_argument("--rate", type=float, default=None, metavar="REQ_PER_S",
                   help="requests/s to serve (default: find the highest rate the SLOs allow)")
    p.add_argument("--ttft-slo", type=float, required=True, metavar="MS", help="time to first token (ms)")
    p.add_argument("--ttl-slo", type=float, required=True, metavar="MS", help="time per output token (ms)")
    p.add_argument("--weight-dtype", default="bf16")
    p.add_argument("--kv-dtype", default="bf16")
    p.add_argument("--act-dtype", default="bf16")
    p.add_argument("--strategies", default=None, metavar="LIST", help="as for plan")
    p.add_argument("--allow-unverified", action="store_true",
                   help="also plan with strategies whose generated program is not yet verified")
    p.add_argument("--no-programs", action="store_true",
                   help="write serve.json and pareto.png only, not each chosen pool's plan directory")
    p.add_argument("--out", required=True, help="output directory")


def _check(args: argparse.Namespace) -> None:
    if args.gpus < 2:
        raise InputError(f"--gpus must be at least 2 (a prefill and a decode pool), got {args.gpus}")
    for name, value in (("--ttft-slo", args.ttft_slo), ("--ttl-slo", args.ttl_slo), ("--rate", args.rate)):
        if value is not None and not value > 0:
            raise InputError(f"{name} must be a positive number, got {value}")


def run(args: argparse.Namespace) -> int:
    from cost_models import load_hardware
    from passes.parallelize.strategies import DEFAULT_STRATEGIES
    from planner.api import make_plan, write_outputs
    from planner.commands.plan import strategies_from_args
    from planner.frontend import load_graph
    from planner.serve.choose import Slos
    from planner.serve.plan import serve_plan, write_serve
    from planner.serve.pools import PlanSettings
    from planner.serve.traffic import read_traffic

    _check(args)
    traffic = read_traffic(args.traffic)
    source = resolve_source(args.model, parse_model_args(args.model_arg))
    hw = load_hardware(args.hardware)
    settings = PlanSettings(
        hardware=hw, strategies=strategies_from_args(args.strategies) or DEFAULT_STRATEGIES,
        verified_only=not args.allow_unverified, weight_dtype=args.weight_dtype,
        kv_dtype=args.kv_dtype, act_dtype=args.act_dtype,
    )
    loaded = load_graph(source)
    console = Console(width=max(Console().width, 120), markup=False)  # plan summaries hold brackets
    with console.status("pricing pool configurations"):
        result = serve_plan(loaded, settings, traffic, gpus=args.gpus,
                            slos=Slos(ttft_s=args.ttft_slo / 1e3, ttl_s=args.ttl_slo / 1e3),
                            rate=args.rate)
    out = Path(args.out)
    title = (f"{source.display} {' '.join(f'{k}={v}' for k, v in source.model_args.items())}, "
             f"{args.gpus}x {hw.name}, prompt {traffic.prompt_tokens:.0f} / output "
             f"{traffic.output_tokens:.0f} tokens")
    paths = write_serve(out, result, title)
    if not args.no_programs:
        chosen = []
        if result.disaggregated:
            chosen += [("prefill", result.disaggregated.prefill), ("decode", result.disaggregated.decode)]
        if result.colocated:
            chosen.append(("colocated", result.colocated.option))
        for name, option in chosen:
            run_ = make_plan(loaded, hardware=hw, gpus=option.gpus, workload=option.workload,
                             strategies=settings.strategies, verified_only=settings.verified_only)
            write_outputs(run_, out / name, unverified_ok=args.allow_unverified)
    _print(console, result)
    console.print(f"wrote {paths['serve']} and {paths['png']}")
    return 0


def _print(console: Console, result) -> None:
    t = result.traffic
    console.print(f"traffic: {t.requests} requests, mean prompt {t.prompt_tokens:.0f}, mean output "
                  f"{t.output_tokens:.0f} tokens; KV per request "
                  f"{result.kv_bytes_per_request / 2**20:.1f} MiB over {result.link['kind']}")
    d, c = result.disaggregated, result.colocated
    if d is None:
        console.print("disaggregated: no configuration meets the SLOs")
    else:
        a = d.allocation
        console.print(
            f"disaggregated: {a.requests_per_s:.3g} req/s on {a.gpus_used} GPUs, "
            f"{d.tokens_per_s_per_gpu:.1f} tok/s/GPU, TTFT {d.ttft_s * 1e3:.1f} ms, TTL {d.ttl_s * 1e3:.2f} ms\n"
            f"  prefill {a.prefill_replicas} x {d.prefill.gpus} GPUs B={d.prefill.workload.batch} "
            f"[{d.prefill.plan}] busy {a.prefill_utilization:.0%}; KV transfer {d.transfer_s * 1e3:.2f} ms\n"
            f"  decode  {a.decode_replicas} x {d.decode.gpus} GPUs B={d.decode.workload.batch} "
            f"[{d.decode.plan}] busy {a.decode_utilization:.0%}")
    if c is None:
        console.print("co-located: no configuration meets the SLOs")
    else:
        console.print(
            f"co-located:    {c.requests_per_s:.3g} req/s on {c.gpus_used} GPUs, "
            f"{c.tokens_per_s_per_gpu:.1f} tok/s/GPU, TTFT {c.hybrid.ttft_s * 1e3:.1f} ms, "
            f"TTL {c.hybrid.ttl_s * 1e3:.2f} ms\n"
            f"  {c.replicas} x {c.option.gpus} GPUs, chunk {c.hybrid.chunk_tokens} + "
            f"{c.hybrid.decode_batch} decodes [{c.option.plan}]")
    if result.disaggregation_gain is not None:
        console.print(f"disaggregated / co-located tokens/s per GPU: {result.disaggregation_gain:.3f}")
