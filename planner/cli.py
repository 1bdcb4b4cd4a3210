"""The `helixplan` command line.

Each subcommand is a module in `planner/commands/` exposing `NAME`, `HELP`,
`add_arguments(parser)` and `run(args) -> int`. A `PlannerError` becomes a one-paragraph
message on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

from ir.errors import PlannerError

COMMANDS = (
    "inspect", "plan", "explain", "verify", "sweep", "calibrate", "serve-plan", "replan",
)


def _load_command(name: str):
    module = f"planner.commands.{name.replace('-', '_')}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with `only` (a command name) of that one alone:
    each command module imports what its command needs, and a run needs one."""
    parser = argparse.ArgumentParser(
        prog="helixplan",
        description="Plan how to parallelize a PyTorch model over GPUs and emit the program.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        mod = _load_command(name)
        if mod is None:
            continue
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def format_error(err: PlannerError) -> str:
    text = " ".join(str(err).split())
    return "\n".join(textwrap.wrap(f"error: {text}", width=100, break_on_hyphens=False, break_long_words=False))


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    # `helixplan plan ...` builds the plan command's parser only; anything else (help, a
    # typo, an option first) gets the full parser and its usual messages.
    parser = build_parser(args_in[0] if args_in and args_in[0] in COMMANDS else None)
    args = parser.parse_args(args_in)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except PlannerError as err:
        print(format_error(err), file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
