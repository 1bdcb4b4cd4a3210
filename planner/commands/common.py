"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse

from ir.errors import InputError
from ir.workload import parse_tokens as _parse_tokens


def parse_tokens(text: str) -> int:
    """argparse type: a token count such as 4096, 128k or 1M (exit 2 with a message)."""
    try:
        return _parse_tokens(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model file (.py) or hf:PATH/config.json")
    p.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="size argument passed to build_model (repeatable), e.g. preset=llama3-8b",
    )


def add_shape_arguments(p: argparse.ArgumentParser, *, batch: int, seq: int, context: str) -> None:
    p.add_argument("--batch", type=int, default=batch, help=f"batch size B (default {batch})")
    p.add_argument(
        "--seq", type=parse_tokens, default=seq, help=f"new tokens per sequence T (default {seq})"
    )
    p.add_argument(
        "--context",
        type=parse_tokens,
        default=parse_tokens(context),
        help=f"cached KV length L, e.g. 4096 or 128k (default {context})",
    )
