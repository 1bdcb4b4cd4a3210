"""Disaggregated prefill/decode pools against co-located chunked prefill on 64 H100s, for a
Llama-3-70B-shaped and a DeepSeek-V3-shaped model, on a prefill-heavy and a decode-heavy mix
(examples/traffic/*.csv). Prints the best configuration of each and the ratio of their
output tokens/s per GPU, then checks the known result: disaggregation pays most for
prefill-heavy traffic and for larger models.

DeepSeek-V3's MoE and latent attention have only a replicated verified plan today (671B does
not fit replicated), so it is planned with every applicable strategy (--allow-unverified):
its pool plans are priced, not verified end to end.

Run: .venv/bin/python benchmarks/serve_disagg.py [--out build/serve-bench]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cost_models import load_hardware  # noqa: E402
from planner.frontend import load_graph  # noqa: E402
from planner.model_source import resolve_source  # noqa: E402
from planner.serve.choose import Slos  # noqa: E402
from planner.serve.plan import serve_plan, write_serve  # noqa: E402
from planner.serve.pools import PlanSettings  # noqa: E402
from planner.serve.traffic import read_traffic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GPUS = 64
MODELS = {
    "llama3-70b": ("examples/llama.py", {"preset": "llama3-70b"}, True),
    "deepseek-v3": ("examples/deepseek.py", {"preset": "deepseek-v3"}, False),
}
MIXES = {
    "prefill-heavy": ROOT / "examples/traffic/prefill_heavy.csv",
    "decode-heavy": ROOT / "examples/traffic/decode_heavy.csv",
}
SLOS = Slos(ttft_s=3.0, ttl_s=0.060)


def _describe(result) -> list[str]:
    lines = []
    d, c = result.disaggregated, result.colocated
    if d:
        a = d.allocation
        lines.append(
            f"  disaggregated {d.tokens_per_s_per_gpu:8.1f} tok/s/GPU  {a.requests_per_s:7.2f} req/s "
            f"on {a.gpus_used} GPUs  TTFT {d.ttft_s * 1e3:6.0f} ms  TTL {d.ttl_s * 1e3:5.1f} ms  "
            f"prefill {a.prefill_replicas}x{d.prefill.gpus} B={d.prefill.workload.batch} [{d.prefill.plan}] "
            f"busy {a.prefill_utilization:.0%} | decode {a.decode_replicas}x{d.decode.gpus} "
            f"B={d.decode.workload.batch} [{d.decode.plan}] busy {a.decode_utilization:.0%} | "
            f"KV {d.kv_bytes_per_request / 2**20:.0f} MiB/req, {d.transfer_s * 1e3:.1f} ms")
    else:
        lines.append("  disaggregated: no configuration meets the SLOs")
    if c:
        lines.append(
            f"  co-located    {c.tokens_per_s_per_gpu:8.1f} tok/s/GPU  {c.requests_per_s:7.2f} req/s "
            f"on {c.gpus_used} GPUs  TTFT {c.hybrid.ttft_s * 1e3:6.0f} ms  TTL {c.hybrid.ttl_s * 1e3:5.1f} ms  "
            f"{c.replicas}x{c.option.gpus} chunk {c.hybrid.chunk_tokens} + {c.hybrid.decode_batch} decodes "
            f"[{c.option.plan}]")
    else:
        lines.append("  co-located: no configuration meets the SLOs")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write serve.json/pareto.png per case here")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    hw = load_hardware("h100-sxm")
    gains: dict[tuple[str, str], float | None] = {}
    summary = {}
    for model in args.models.split(","):
        path, model_args, verified = MODELS[model]
        source = resolve_source(str(ROOT / path), model_args)
        loaded = load_graph(source)
        settings = PlanSettings(hardware=hw, verified_only=verified)
        for mix, csv in MIXES.items():
            traffic = read_traffic(csv)
            t0 = time.perf_counter()
            result = serve_plan(loaded, settings, traffic, gpus=GPUS, slos=SLOS)
            seconds = time.perf_counter() - t0
            gains[(model, mix)] = result.disaggregation_gain
            print(f"{model} ({'verified' if verified else 'unverified strategies'}), {mix}: prompt "
                  f"{traffic.prompt_tokens:.0f} / output {traffic.output_tokens:.0f} tokens, {GPUS} H100, "
                  f"TTFT <= {SLOS.ttft_s * 1e3:.0f} ms, TTL <= {SLOS.ttl_s * 1e3:.0f} ms "
                  f"({seconds:.0f} s to plan)")
            for line in _describe(result):
                print(line)
            gain = result.disaggregation_gain
            print(f"  disaggregated / co-located: {gain:.3f}" if gain else "  no ratio")
            summary[f"{model}/{mix}"] = result.to_dict()
            if args.out:
                write_serve(Path(args.out) / model / mix, result, f"{model}, {mix}, {GPUS}x H100")
    print("\nknown result (disaggregation pays most for prefill-heavy traffic and larger models):")
    for model in args.models.split(","):
        p, d = gains.get((model, "prefill-heavy")), gains.get((model, "decode-heavy"))
        if p and d:
            verdict = "holds" if p > d else "does NOT hold"
            print(f"  {model}: prefill-heavy gain {p:.3f} vs decode-heavy {d:.3f} -> {verdict}")
    models = args.models.split(",")
    if len(models) == 2 and all(gains.get((m, "prefill-heavy")) for m in models):
        small, large = (gains[(m, "prefill-heavy")] for m in models)
        verdict = "holds" if large > small else "does NOT hold"
        print(f"  prefill-heavy: {models[1]} gain {large:.3f} vs {models[0]} {small:.3f} -> {verdict}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
