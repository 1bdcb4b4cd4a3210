"""Cold wall time of `helixplan inspect` (a fresh process, empty trace cache) on full-size
Llama-3-8B and DeepSeek-V3. Target: under 30 s each on a 2-core machine."""

from __future__ import annotations

import json
import tempfile

from _common import run_cli

CASES = [
    ("llama3-8b (examples/llama.py)", ["examples/llama.py", "--model-arg", "preset=llama3-8b"]),
    ("llama3-8b (hf config)", ["hf:tests/configs/hf/llama3_8b.json"]),
    ("deepseek-v3 (examples/deepseek.py)", ["examples/deepseek.py", "--model-arg", "preset=deepseek-v3"]),
    ("deepseek-v3 (hf config)", ["hf:tests/configs/hf/deepseek_v3.json"]),
]


def main() -> None:
    rows = []
    for label, args in CASES:
        with tempfile.TemporaryDirectory() as cache:
            seconds, out = run_cli(["inspect", *args, "--json"], cache_dir=cache)
        report = json.loads(out)
        rows.append({"model": label, "cold_s": round(seconds, 2), "blocks": len(report["blocks"]),
                     "params": report["params"]})
        print(f"{label:38s} cold {seconds:6.2f} s  {len(report['blocks'])} blocks  "
              f"{report['params'] / 1e9:.2f} B params", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
