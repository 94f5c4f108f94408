"""`parcae train [CONFIG] [--key value ...] [--model.field value ...]`

With no arguments: fetch the Shakespeare corpus, train a tokenizer, write shards, train the default tiny
Parcae on this machine within 10 minutes, evaluate validation bits per byte, write the run directory and
print where everything is. CONFIG is a packaged config name (`tiny`, `parcae-small-140m`, ...) or a YAML
file. Multi-process: `torchrun --nproc_per_node N --no-python parcae train CONFIG ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

HELP_FLAGS = ("-h", "--help")


def register(subparsers) -> None:
    # Options are free-form `--key value` pairs checked against RunConfig, so argparse must not parse them:
    # a '+' prefix makes every '--...' token a positional.
    p = subparsers.add_parser(
        "train",
        help="train a model (default: the tiny Parcae on Shakespeare, <= 10 min on CPU)",
        description=__doc__,
        prefix_chars="+",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG] [--key value ...]")
    p.set_defaults(func=run, _parser=p)


def _help() -> str:
    from parcae_lm.train.config import RunConfig, packaged_config_names

    lines = [__doc__.strip(), "", "packaged configs: " + ", ".join(packaged_config_names()), "", "options:"]
    for f in dataclasses.fields(RunConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if hasattr(default, "value"):
            default = default.value
        lines.append(f"  --{f.name} (default: {default!r})")
    lines.append("  --model.<field> VALUE   override a model config field (see `parcae model info`)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from parcae_lm.train.config import load_run_config
    from parcae_lm.train.trainer import train

    start = time.time()
    tokens = list(args.args)
    if any(t in HELP_FLAGS for t in tokens):
        print(_help())
        return 0
    config = tokens.pop(0) if tokens and not tokens[0].startswith("--") else None
    name, cfg = load_run_config(config, tokens)
    result = train(cfg, config_name=name, start_time=start)
    if result.summary:
        print_summary(result.summary)
    return 0


def print_summary(s: dict) -> None:
    rows = [
        ("model", f"{s['model']} ({s['params'] / 1e6:.2f}M parameters)"),
        ("steps / tokens", f"{s['steps']} / {s['tokens']:,}"),
        (
            "training time",
            f"{s['train_seconds']:.0f} s ({s['tokens_per_second']:.0f} tok/s, MFU {s['mfu']:.1%})",
        ),
        ("total time", f"{s['total_seconds']:.0f} s"),
        ("val loss", f"{s['val_loss']:.4f} nats/token"),
        ("val bpb", f"{s['val_bpb']:.4f} bits/byte"),
    ]
    depth_bpb = {k: v for k, v in s["val"].items() if k.startswith("bpb_d")}
    if depth_bpb:
        rows.append(("val bpb by depth", ", ".join(f"{k[5:]}: {v:.3f}" for k, v in depth_bpb.items())))
    rows += [(k, v) for k, v in s["paths"].items()]
    rows.append(("run directory", s["run_dir"]))
    width = max(len(k) for k, _ in rows)
    out = sys.stdout
    out.write("\n" + "-" * (width + 60) + "\n")
    for k, v in rows:
        out.write(f"{k:<{width}}  {v}\n")
    out.write("-" * (width + 60) + "\n")
    if s.get("samples"):
        first = s["samples"][0]
        out.write(f"sample ({first['prompt']!r}):\n{first['text'][:400]}\n")
    out.write(f'generate more: parcae generate {s["run_dir"]} "ROMEO:"\n')
