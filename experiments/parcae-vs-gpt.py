"""Parcae vs GPT at equal unique parameters, data and tokens; the grid is parcae-vs-gpt.yaml.

    python experiments/parcae-vs-gpt.py [--smoke] [--out studies/parcae-vs-gpt]

Tabulates parameters, tokens, FLOPs, time and validation loss / bpb (per test-time depth), and plots both
training curves against tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
from harness import Context, Report, main, train_curve

from parcae_lm.scaling.plots import save_figure
from parcae_lm.scaling.report import markdown_table
from parcae_lm.scaling.runner import SweepResult

SWEEP = Path(__file__).with_suffix(".yaml")
COLUMNS = [
    ("model", "model"),
    ("params", "params"),
    ("n_eff", "N_eff (unrolled, non-emb.)"),
    ("tokens", "tokens"),
    ("flops_actual", "train FLOPs"),
    ("train_seconds", "train s"),
    ("val_loss", "val loss"),
    ("val_bpb", "val bpb"),
]


def analyse(result: SweepResult, context: Context) -> Report:
    rows = result.rows
    depth_keys = sorted(
        {k for r in rows for k in r if k.startswith("val_bpb_d")}, key=lambda k: int(k.split("_d")[-1])
    )
    columns = COLUMNS + [(k, f"bpb T={k.split('_d')[-1]}") for k in depth_keys]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        curve = train_curve(r["run_dir"])
        label = f"{r['model']} (val bpb {r['val_bpb']:.3f})"
        ax.plot([c["tokens"] for c in curve], [c["loss"] for c in curve], label=label)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("train loss (nats/token)")
    ax.set_title("Parcae vs GPT: same unique parameters, same data, same tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Report(markdown_table(rows, columns), [save_figure(fig, context.fig_dir / "parcae-vs-gpt.png")])


if __name__ == "__main__":
    sys.exit(main(SWEEP, analyse, __doc__))
