"""`parcae` — one command, with subcommands that call the library.

Each command group lives in its own module here and exposes `register(subparsers)`; every
subcommand sets `func(args) -> int | None`. User errors (ParcaeError) print without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from parcae_lm.errors import ParcaeError
from parcae_lm.runtime import keep_freed_memory

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
    keep_freed_memory()  # reuse freed activations instead of page-faulting them back in every step
    if getattr(args, "token_by_token", False) and "torch" not in sys.modules:
        # One-token decode steps are chains of tiny ops: OpenMP workers that sleep between them pay a
        # wake-up on every matmul (decode 120 → 200 tok/s on the benchmark). Training is not helped.
        os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
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
