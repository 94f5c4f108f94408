"""Iso-FLOP scaling study: mean recurrence x FLOP budget (paper §5.2); the grid is scaling.yaml.

    python experiments/scaling.py [--smoke] [--out studies/scaling]

Tabulates every point's budget, FLOPs/token, tokens and loss, then fits the per-budget parabolas and the
power laws μ_rec*(C) and D*(C) with 1000 bootstrap replicates, and plots both.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness import Context, Report, main

from parcae_lm.errors import ConfigError
from parcae_lm.scaling import plots
from parcae_lm.scaling.isoflop import fit_isoflop
from parcae_lm.scaling.report import markdown_isoflop, markdown_table
from parcae_lm.scaling.runner import SweepResult
from parcae_lm.scaling.table import FLOPS, LOSS, MEAN_RECURRENCE, TOKENS, RunTable

SWEEP = Path(__file__).with_suffix(".yaml")
COLUMNS = [
    ("flops", "budget C"),
    ("mean_recurrence", "μ_rec"),
    ("mean_backprop_depth", "backprop depth"),
    ("flops_per_token", "FLOPs/token"),
    ("tokens", "tokens D"),
    ("steps", "steps"),
    ("n_eff", "N_eff"),
    ("val_loss", "val loss (T=μ_rec)"),
    ("val_bpb", "val bpb"),
]


def analyse(result: SweepResult, context: Context) -> Report:
    rows = sorted(
        [r for r in result.rows if r.get(LOSS) is not None], key=lambda r: (r[FLOPS], r[MEAN_RECURRENCE])
    )
    markdown = [markdown_table(rows, COLUMNS)]
    figures, extra = [], {}
    table = RunTable(rows, "sweep")
    flops, loss = table.numeric(FLOPS), table.numeric(LOSS)
    for column in (MEAN_RECURRENCE, TOKENS):
        try:
            fit = fit_isoflop(flops, table.numeric(column), loss, variable=column, n_boot=1000, seed=0)
        except ConfigError as e:  # a fit that cannot be made is a finding, reported as such
            markdown.append(f"\n**{column}**: no iso-FLOP fit: {e}\n")
            continue
        markdown.append("\n" + markdown_isoflop(fit))
        extra[column] = fit.to_dict()
        figures.append(plots.plot_isoflop(fit, context.fig_dir / f"scaling-isoflop-{column}.png"))
        if fit.power_law.n_valid:
            figures.append(plots.plot_power_law(fit, context.fig_dir / f"scaling-powerlaw-{column}.png"))
    return Report("\n".join(markdown), figures, extra)


if __name__ == "__main__":
    sys.exit(main(SWEEP, analyse, __doc__))
