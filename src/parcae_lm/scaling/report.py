"""Markdown for the fits and the results tables: what `parcae fit` prints and the studies' reports hold."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from parcae_lm.scaling.isoflop import IsoFlopFit
from parcae_lm.scaling.laws import LawFit
from parcae_lm.scaling.testtime import TestTimeFits


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: numbers to `digits` significant digits, '-' for a missing or non-finite value."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A markdown table of `rows`, one column per (key, title) in `columns`."""
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "|" + "---|" * len(columns)
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def markdown_isoflop(fit: IsoFlopFit) -> str:
    """The power law of the optima with its bootstrap interval, then one row per budget."""
    p = fit.power_law
    pct = round(100 * p.ci_level)
    lines = [
        f"**{fit.variable}\\* ∝ C^a**: a = {p.exponent:.4f} (bootstrap median {p.exponent_median:.4f}, "
        f"{pct}% CI [{p.exponent_ci[0]:.4f}, {p.exponent_ci[1]:.4f}], "
        f"{p.n_valid}/{p.n_boot} {p.bootstrap.value}-bootstrap replicates), coefficient = {p.coefficient:.4g}, "
        f"R² = {fmt(p.r2)}",
        "",
        f"| budget C | runs | {fit.variable}* | loss at optimum | used |",
        "|---|---|---|---|---|",
    ]
    for b in fit.budgets:
        used = "yes" if b.used else f"no: {b.note}"
        lines.append(f"| {b.flops:.3g} | {len(b.x)} | {fmt(b.optimum)} | {fmt(b.loss_at_optimum)} | {used} |")
    return "\n".join(lines) + "\n"


def markdown_law(fit: LawFit) -> str:
    """The law, its parameters (those held fixed marked so) and the fit's quality, as one table row."""
    fitted = {p.name for p in fit.law.params}
    names = [name if name in fitted else f"{name} (fixed)" for name in fit.values]
    head = [*names, "Huber", "mean abs rel err", "R²", "points"]
    cells = [f"{v:.6g}" for v in fit.values.values()]
    cells += [f"{fit.huber:.3g}", f"{100 * fit.mean_abs_rel_error:.3f}%", fmt(fit.r2), str(fit.n_points)]
    return (
        f"**{fit.law.formula}**\n\n| {' | '.join(head)} |\n|{'---|' * len(head)}\n| {' | '.join(cells)} |\n"
    )


def markdown_testtime(fits: TestTimeFits) -> str:
    """One row per model: L∞, Z, z with standard errors, R², RMSE."""
    lines = [
        "**L(T) = L∞ + Z·exp(−z·T)** (± standard errors)",
        "",
        f"| {fits.group_column or 'model'} | L∞ | Z | z | R² | RMSE | points |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in fits.fits:
        lines.append(
            f"| {f.label} | {f.L_inf:.4f} ± {fmt(f.L_inf_se, 2)} | {f.Z:.4f} ± {fmt(f.Z_se, 2)} | "
            f"{f.z:.4f} ± {fmt(f.z_se, 2)} | {fmt(f.r2)} | {f.rmse:.3g} | {f.n_points} |"
        )
    return "\n".join(lines) + "\n"
