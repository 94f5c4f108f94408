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


def _interval(ci: tuple[float, float] | None, digits: int = 4) -> str:
    return "no interval" if ci is None else f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"


def _warnings(warnings: Sequence[str]) -> list[str]:
    return ["", *(f"- **warning:** {w}" for w in warnings)] if warnings else []


def markdown_isoflop(fit: IsoFlopFit) -> str:
    """The power law of the optima with its intervals and warnings, then one row per budget."""
    p = fit.power_law
    pct = round(100 * p.ci_level)
    head = f"**{fit.variable}\\* ∝ C^a**: a = {p.exponent:.4f}, {pct}% CI {_interval(p.exponent_ci)}"
    if p.exponent_ci is not None:
        parts = []
        if p.exponent_ci_bootstrap is not None:
            parts.append(
                f"bootstrap {_interval(p.exponent_ci_bootstrap)} from {p.n_valid}/{p.n_boot} "
                f"{p.bootstrap.value}-bootstrap replicates, median {p.exponent_median:.4f}"
            )
        if p.exponent_ci_t is not None:
            parts.append(f"t({p.n_budgets - 2}) {_interval(p.exponent_ci_t)}, SE {p.exponent_se:.3g}")
        head += " (spans " + "; ".join(parts) + ")"
    head += f"; coefficient = {p.coefficient:.4g} {_interval(p.coefficient_ci)}; R² = {fmt(p.r2)}"
    if p.ci_note and p.ci_note not in fit.warnings:
        head += f". {p.ci_note[0].upper()}{p.ci_note[1:]}."
    lines = [
        head,
        *_warnings(fit.warnings),
        "",
        f"| budget C | runs | distinct {fit.variable} | {fit.variable}* | extrapolated | loss at optimum | "
        "dropped by the bootstrap | used |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in fit.budgets:
        used = "yes" if b.used else f"no: {b.note}"
        extra = "no" if b.extrapolation <= 1 else f"{b.extrapolation:.2f}x"
        dropped = "-" if b.boot_dropped is None else f"{100 * b.boot_dropped:.1f}%"
        lines.append(
            f"| {b.flops:.3g} | {len(b.x)} | {b.distinct} | {fmt(b.optimum)} | {extra} | "
            f"{fmt(b.loss_at_optimum)} | {dropped} | {used} |"
        )
    return "\n".join(lines) + "\n"


def markdown_law(fit: LawFit) -> str:
    """The law, one row per parameter (value, interval, bound flags), the fit's quality and warnings."""
    fitted = {p.name for p in fit.law.params}
    pct = round(100 * fit.ci_level)
    lines = [
        f"**{fit.law.formula}**",
        "",
        f"| parameter | value | {pct}% CI (bootstrap) | note |",
        "|---|---|---|---|",
    ]
    for name, value in fit.values.items():
        if name not in fitted:
            lines.append(f"| {name} (fixed) | {value:.6g} | - | |")
            continue
        ci = None if fit.intervals is None else fit.intervals.get(name)
        notes = []
        if name in fit.at_bound:
            notes.append(f"at the solver's {fit.at_bound[name]} bound: not determined")
        share = fit.boot_at_bound.get(name, 0.0)
        if share:
            notes.append(f"{100 * share:.0f}% of replicates at a bound")
        lines.append(f"| {name} | {value:.6g} | {_interval(ci)} | {'; '.join(notes)} |")
    boot = f"{fit.n_valid}/{fit.n_boot} bootstrap replicates" if fit.n_boot else "no bootstrap (n_boot = 0)"
    lines += [
        "",
        f"Huber {fit.huber:.3g}, mean abs rel err {100 * fit.mean_abs_rel_error:.3f}%, R² {fmt(fit.r2)}, "
        f"{fit.n_points} points, {boot}.",
        *_warnings(fit.warnings),
    ]
    return "\n".join(lines) + "\n"


def markdown_testtime(fits: TestTimeFits) -> str:
    """One row per model: L∞, Z, z with standard errors and t intervals, R², RMSE."""
    pct = round(100 * fits.fits[0].ci_level) if fits.fits else 95
    lines = [
        f"**L(T) = L∞ + Z·exp(−z·T)** (± standard errors; {pct}% intervals: estimate ± t(n − 3)·SE)",
        "",
        f"| {fits.group_column or 'model'} | L∞ | Z | z | R² | RMSE | points | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in fits.fits:
        note = f.note
        lines.append(
            f"| {f.label} | {f.L_inf:.4f} ± {fmt(f.L_inf_se, 2)} {_interval(f.L_inf_ci)} | "
            f"{f.Z:.4f} ± {fmt(f.Z_se, 2)} {_interval(f.Z_ci)} | {f.z:.4f} ± {fmt(f.z_se, 2)} {_interval(f.z_ci)} | "
            f"{fmt(f.r2)} | {f.rmse:.3g} | {f.n_points} | {note} |"
        )
    return "\n".join(lines) + "\n"
