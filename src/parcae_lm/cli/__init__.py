"""`parcae` — one command, with subcommands that call the library.

Each command group lives in its own module here and exposes `register(subparsers)`; every
subcommand sets `func(args) -> int | None`. User errors (ParcaeError) print without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from parcae_lm.errors import ParcaeError

# Command-group modules, in the order they appear in `parcae --help`.
GROUPS = ["model", "data", "train", "eval", "scaling", "infer"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parcae", description="Parcae: stable looped language models")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(f"parcae_lm.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ParcaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `parcae sweep --emit slurm | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
