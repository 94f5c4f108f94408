"""`parcae train`: the run config's options (`--config NAME_OR_PATH`, `--group.field VALUE`)."""

from __future__ import annotations

import sys
import time
from typing import Any

from parcae_lm.cli.command import options_of
from parcae_lm.config.train import load_run_config, run_parser
from parcae_lm.train.run import train as run_training


@options_of(run_parser)
def train(settings: dict[str, Any]) -> None:
    """Train a model (default: the tiny Parcae on Shakespeare, <= 10 min on CPU).

    With no options: fetch the Shakespeare corpus, train a tokenizer, write shards, train the default tiny
    Parcae on this machine within 10 minutes, evaluate validation bits per byte, write the run directory
    and print where everything is. --config names a packaged run config (tiny, tiny-gpt,
    parcae-small-140m, ...) or a YAML file; every other option overrides one of its settings (lists as
    [1,2], a budget given here replaces the config's). Multi-process:
    `torchrun --nproc_per_node N --no-python parcae train --config NAME ...`.
    """
    start = time.time()
    settings = dict(settings)
    base = settings.pop("config", None)
    result = run_training(load_run_config(base, settings), start_time=start)
    if result.summary:
        print_summary(result.summary)


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
