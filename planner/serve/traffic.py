"""A traffic mix read from a CSV of (prompt_tokens, output_tokens) pairs, one request a row."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ir.errors import InputError


@dataclass(frozen=True, kw_only=True)
class Traffic:
    """Mean request shape of a mix. `decode_context_tokens` is the mean KV length a decoding
    sequence holds: its prompt plus half its output (sequences are at every age at once)."""

    requests: int
    prompt_tokens: float
    output_tokens: float
    max_prompt_tokens: int
    max_output_tokens: int
    source: str = ""

    def __post_init__(self) -> None:
        if self.requests < 1 or self.prompt_tokens < 1 or self.output_tokens < 1:
            raise InputError(
                f"traffic {self.source or ''} needs at least one request with >= 1 prompt and "
                f">= 1 output token; got {self.requests} requests, mean prompt "
                f"{self.prompt_tokens}, mean output {self.output_tokens}"
            )

    @property
    def decode_context_tokens(self) -> int:
        return round(self.prompt_tokens + self.output_tokens / 2)

    @staticmethod
    def of(pairs: list[tuple[int, int]], source: str = "") -> Traffic:
        if not pairs:
            raise InputError(f"traffic {source} has no requests; give rows of prompt_tokens,output_tokens")
        n = len(pairs)
        return Traffic(
            requests=n,
            prompt_tokens=sum(p for p, _ in pairs) / n,
            output_tokens=sum(o for _, o in pairs) / n,
            max_prompt_tokens=max(p for p, _ in pairs),
            max_output_tokens=max(o for _, o in pairs),
            source=source,
        )

    def to_dict(self) -> dict:
        return {
            "requests": self.requests,
            "mean_prompt_tokens": self.prompt_tokens,
            "mean_output_tokens": self.output_tokens,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_output_tokens": self.max_output_tokens,
            "mean_decode_context_tokens": self.decode_context_tokens,
            "source": self.source,
        }


def read_traffic(path: str | Path) -> Traffic:
    """Rows `prompt_tokens,output_tokens` (a header row naming them is optional)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"--traffic {str(path)!r} is not a file; give a CSV with one request per row: "
            "prompt_tokens,output_tokens"
        )
    pairs: list[tuple[int, int]] = []
    with path.open(newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or cells[0].startswith("#"):
                continue
            if lineno == 1 and not cells[0].lstrip("-").isdigit():
                continue  # header
            if len(cells) < 2:
                raise InputError(f"{path}:{lineno}: expected prompt_tokens,output_tokens, got {row!r}")
            try:
                prompt, output = int(cells[0]), int(cells[1])
            except ValueError:
                raise InputError(
                    f"{path}:{lineno}: {row!r} is not two integers (prompt_tokens,output_tokens)"
                ) from None
            if prompt < 1 or output < 1:
                raise InputError(
                    f"{path}:{lineno}: prompt and output tokens must be >= 1, got {prompt},{output}"
                )
            pairs.append((prompt, output))
    return Traffic.of(pairs, source=str(path))
