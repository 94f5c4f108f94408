"""Stability study: injection x learning rate (paper Table 2, Fig. 2); the grid is stability.yaml.

    python experiments/stability.py [--smoke] [--out studies/stability]

Tabulates divergence, loss spikes, state norm and spectral radius per point, and plots train loss, state
norm ‖h_T‖ and ρ(Ā) against step, one column per injection, one colour per learning rate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.pyplot as plt
from harness import Context, Report, main, train_curve

from parcae_lm.scaling.collect import SPIKE_FACTOR, SPIKE_WARMUP_FRACTION
from parcae_lm.scaling.plots import save_figure
from parcae_lm.scaling.report import markdown_table
from parcae_lm.scaling.runner import SweepResult

SWEEP = Path(__file__).with_suffix(".yaml")
INJECTION, ADAM_LR, MUON_LR = "model.injection_type", "optim.adam_lr", "optim.muon_lr"
COLUMNS = [
    (INJECTION, "injection"),
    (ADAM_LR, "Adam LR"),
    (MUON_LR, "Muon LR"),
    ("status", "status"),
    ("diverged", "diverged"),
    ("loss_spikes", "spikes"),
    ("max_loss_over_min", "max loss / min"),
    ("train_loss_final", "final train loss"),
    ("val_loss", "val loss"),
    ("state_norm_first", "‖h_T‖ first"),
    ("state_norm_max", "‖h_T‖ max"),
    ("state_norm_final", "‖h_T‖ final"),
    ("spectral_radius_first", "ρ(Ā) first"),
    ("spectral_radius_max", "ρ(Ā) max"),
]
CURVES = [("loss", "train loss"), ("state_norm", "state norm ‖h_T‖"), ("spectral_radius", "ρ(Ā)")]


def analyse(result: SweepResult, context: Context) -> Report:
    order = {p.settings[INJECTION]: i for i, p in reversed(list(enumerate(result.points)))}
    rows = sorted(result.rows, key=lambda r: (order[r[INJECTION]], r[ADAM_LR]))
    markdown = (
        f"Divergence: stopped on a non-finite value, or final train loss > {SPIKE_FACTOR}x its running "
        f"minimum. Loss spike: a logged train loss > {SPIKE_FACTOR}x the running minimum, after the first "
        f"{SPIKE_WARMUP_FRACTION:.0%} of steps.\n\n" + markdown_table(rows, COLUMNS)
    )
    injections = list(dict.fromkeys(r[INJECTION] for r in rows))
    lrs = sorted({r[ADAM_LR] for r in rows})
    colors = dict(zip(lrs, plt.cm.viridis([i / max(len(lrs) - 1, 1) * 0.9 for i in range(len(lrs))])))
    fig, axes = plt.subplots(3, len(injections), figsize=(4.2 * len(injections), 9), squeeze=False)
    for j, injection in enumerate(injections):
        for r in (r for r in rows if r[INJECTION] == injection):
            curve = train_curve(r["run_dir"])
            for i, (key, label) in enumerate(CURVES):
                points = [(c["step"], c[key]) for c in curve if c.get(key) is not None]
                if points:
                    style = "--" if r["diverged"] else "-"
                    axes[i][j].plot(
                        *zip(*points), style, color=colors[r[ADAM_LR]], label=f"adam {r[ADAM_LR]:g}"
                    )
                    axes[i][j].set_ylabel(label)
        axes[0][j].set_title(f"injection = {injection}")
        axes[1][j].set_yscale("log")
        axes[2][j].axhline(1.0, color="gray", ls=":", lw=1)  # ρ = 1: the stability boundary
        axes[2][j].set_xlabel("step")
        for i in range(3):
            axes[i][j].grid(alpha=0.3)
        axes[0][j].legend(fontsize=7)
    fig.suptitle("Stability: injection x learning rate (dashed = diverged)")
    fig.tight_layout()
    return Report(markdown, [save_figure(fig, context.fig_dir / "stability.png")])


if __name__ == "__main__":
    sys.exit(main(SWEEP, analyse, __doc__))
