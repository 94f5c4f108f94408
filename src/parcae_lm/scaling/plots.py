"""PNG plots of the scaling-law fits (`isoflop`, `testtime`, `laws`) (matplotlib, Agg backend).

- `plot_isoflop`: loss against x (μ_rec or tokens) per budget, the fitted parabolas, optimum markers.
- `plot_power_law`: optimum x*(C) on log-log axes with the fitted line and its bootstrap band.
- `plot_test_time`: loss against test-time recurrence T per model with the fitted L∞ + Z·exp(−z·T).
- `plot_parity`: predicted against observed loss, for the parametric and unified laws.

Every function writes one PNG (atomically, with `save_figure`) and returns its path.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # headless: plots are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from parcae_lm.files import atomic_write_bytes  # noqa: E402
from parcae_lm.scaling.isoflop import IsoFlopFit  # noqa: E402
from parcae_lm.scaling.testtime import TestTimeFits  # noqa: E402

_LABELS = {"mean_recurrence": "mean recurrence μ_rec", "tokens": "training tokens D"}


def _label(variable: str) -> str:
    return _LABELS.get(variable, variable)


def _plain_ticks(axis, values) -> None:
    """Plain numbers instead of 2×10⁰ on a log axis whose values span less than a few decades."""
    values = np.asarray(values, dtype=float)
    if values.min() >= 1e-2 and values.max() <= 1e4:
        axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` to `path` as a PNG (atomically), close it, and return the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_isoflop(fit: IsoFlopFit, path: str | Path, *, loss_label: str = "validation loss") -> Path:
    """One curve per budget: runs as dots, the parabola in ln(x) as a line, its vertex as a star."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(fit.budgets)))
    for b, color in zip(fit.budgets, colors):
        x = np.asarray(b.x)
        ax.scatter(x, b.loss, color=color, s=18, zorder=3)
        lo, hi = np.log(x.min()), np.log(x.max())
        if b.optimum is not None and b.used:
            lo, hi = min(lo, np.log(b.optimum)), max(hi, np.log(b.optimum))
        u = np.linspace(lo, hi, 200)
        ax.plot(np.exp(u), np.polyval(b.coeffs, u), color=color, lw=1.2, label=f"C = {b.flops:.2g}")
        if b.used:
            ax.scatter(
                [b.optimum], [b.loss_at_optimum], marker="*", s=140, color=color, edgecolor="k", zorder=4
            )
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis, np.concatenate([b.x for b in fit.budgets]))
    ax.set_xlabel(_label(fit.variable))
    ax.set_ylabel(loss_label)
    ax.set_title(f"Iso-FLOP curves (★ = fitted optimum {fit.variable}*)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def plot_power_law(fit: IsoFlopFit, path: str | Path) -> Path:
    """Optima x*(C) on log-log axes, the fitted power law and its pointwise bootstrap band."""
    p = fit.power_law
    used = [b for b in fit.budgets if b.used]
    cs = np.array([b.flops for b in used])
    ys = np.array([b.optimum for b in used])
    grid = np.geomspace(cs.min() / 1.5, cs.max() * 1.5, 100)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    band = p.band(grid)
    label = f"{fit.variable}* ∝ C^{p.exponent:.3f}"
    if band is not None and p.exponent_ci is not None:
        ax.fill_between(
            grid, *band, color="C0", alpha=0.2, label=f"{round(100 * p.ci_level)}% bootstrap band"
        )
        label += f" [{p.exponent_ci[0]:.3f}, {p.exponent_ci[1]:.3f}]"
    else:
        label += " (no interval)"
    ax.plot(grid, p.predict(grid), color="C0", label=label)
    ax.scatter(cs, ys, color="k", zorder=3, label="iso-FLOP optima")
    skipped = [b for b in fit.budgets if not b.used and b.optimum is not None]
    if skipped:
        ax.scatter(
            [b.flops for b in skipped],
            [b.optimum for b in skipped],
            marker="x",
            color="r",
            zorder=3,
            label="excluded optima",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.yaxis, np.concatenate([*(band or ()), ys]))
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel(f"optimal {_label(fit.variable)}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def plot_test_time(fits: TestTimeFits, path: str | Path, *, loss_label: str = "validation loss") -> Path:
    """Loss against test-time recurrence T per model, with the fitted curve and its L∞ asymptote."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(fits.fits)))
    for f, color in zip(fits.fits, colors):
        ax.scatter(f.steps, f.loss, color=color, s=16, zorder=3)
        grid = np.linspace(min(f.steps), max(f.steps), 200)
        ax.plot(grid, f.predict(grid), color=color, lw=1.2, label=f"{f.label}: z = {f.z:.3f}")
        ax.axhline(f.L_inf, color=color, lw=0.8, ls="--")
    ax.set_xlabel("test-time recurrence T")
    ax.set_ylabel(loss_label)
    ax.set_title("L(T) = L∞ + Z·exp(−z·T)  (dashed: L∞)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_parity(
    observed, predicted, path: str | Path, *, title: str, color_by=None, color_label: str = ""
) -> Path:
    """Predicted against observed loss, with the identity line; optionally coloured by a column."""
    observed, predicted = np.asarray(observed, dtype=float), np.asarray(predicted, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(observed, predicted, c=color_by, s=14, cmap="viridis" if color_by is not None else None)
    if color_by is not None:
        fig.colorbar(sc, ax=ax, label=color_label)
    lo = min(observed.min(), predicted.min())
    hi = max(observed.max(), predicted.max())
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    ax.set_xlabel("observed loss")
    ax.set_ylabel("predicted loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
