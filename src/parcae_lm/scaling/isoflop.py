"""Iso-FLOP analysis (paper §5.2): where along a budget's runs the loss is lowest, and how that moves with C.

For every training-FLOP budget C, a parabola of loss against ln(x) (x = mean recurrence μ_rec, or
tokens D) locates the optimum x*(C) at its vertex. Then x* = k·C^a is fitted by least squares in
log-log space. Confidence intervals come from a seeded bootstrap: resample the runs within each budget
with replacement (or, optionally, the parabola's residuals), refit every parabola and the power law,
report median and percentile interval. The paper finds μ_rec* ∝ C^0.40 and D* ∝ C^0.78. numpy only.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from parcae_lm.errors import ConfigError
from parcae_lm.scaling import metrics
from parcae_lm.scaling.table import MEAN_RECURRENCE, positive


class Bootstrap(enum.Enum):
    """How the iso-FLOP bootstrap perturbs a budget's runs."""

    RUNS = "runs"  # resample runs with replacement (robust to a wrong parabola; conservative with few runs)
    RESIDUALS = "residuals"  # keep the design, resample parabola residuals (calibrated if the parabola holds)


@dataclass
class BudgetOptimum:
    """One budget's parabola L = c2·u² + c1·u + c0 in u = ln(x), and its vertex (the optimum)."""

    flops: float
    x: list[float]
    loss: list[float]
    coeffs: tuple[float, float, float]  # (c2, c1, c0)
    optimum: float | None  # x* = exp(−c1 / 2c2), None if the parabola has no usable minimum
    loss_at_optimum: float | None
    used: bool  # whether the optimum enters the power-law fit
    note: str = ""  # why it was left out (human-readable)

    def to_dict(self) -> dict:
        return {
            "flops": self.flops,
            "optimum": self.optimum,
            "loss_at_optimum": self.loss_at_optimum,
            "used": self.used,
            "note": self.note,
            "coeffs": list(self.coeffs),
            "x": self.x,
            "loss": self.loss,
        }


@dataclass
class PowerLawFit:
    """y = coefficient · C^exponent, least squares in log-log space, with bootstrap intervals."""

    exponent: float
    coefficient: float
    r2: float
    exponent_median: float
    exponent_ci: tuple[float, float]
    coefficient_median: float
    coefficient_ci: tuple[float, float]
    ci_level: float
    n_boot: int
    n_valid: int  # bootstrap replicates with ≥ 2 usable budgets
    seed: int
    bootstrap: Bootstrap
    boot_exponents: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    boot_log_coefficients: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    def predict(self, flops: float | np.ndarray) -> np.ndarray:
        return self.coefficient * np.asarray(flops, dtype=np.float64) ** self.exponent

    def band(self, flops: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval of the fitted line at `flops` (level `ci_level`)."""
        c = np.log(np.atleast_1d(np.asarray(flops, dtype=np.float64)))
        if self.boot_exponents.size == 0:
            pred = self.predict(np.exp(c))
            return pred, pred
        logs = self.boot_log_coefficients[:, None] + self.boot_exponents[:, None] * c[None, :]
        q = 100 * (1 - self.ci_level) / 2
        lo, hi = np.percentile(logs, [q, 100 - q], axis=0)
        return np.exp(lo), np.exp(hi)

    def to_dict(self) -> dict:
        return {
            "exponent": self.exponent,
            "coefficient": self.coefficient,
            "r2": self.r2,
            "exponent_median": self.exponent_median,
            "exponent_ci": list(self.exponent_ci),
            "coefficient_median": self.coefficient_median,
            "coefficient_ci": list(self.coefficient_ci),
            "ci_level": self.ci_level,
            "n_boot": self.n_boot,
            "n_valid": self.n_valid,
            "seed": self.seed,
            "bootstrap": self.bootstrap.value,
        }


@dataclass
class IsoFlopFit:
    """The iso-FLOP analysis of one variable (μ_rec or D): per-budget optima and their power law."""

    variable: str
    budgets: list[BudgetOptimum]
    power_law: PowerLawFit
    max_extrapolation: float

    def to_dict(self) -> dict:
        return {
            "variable": self.variable,
            "law": f"{self.variable}* = coefficient * C^exponent",
            "max_extrapolation": self.max_extrapolation,
            "power_law": self.power_law.to_dict(),
            "budgets": [b.to_dict() for b in self.budgets],
        }


def _parabola_vertex(
    u: np.ndarray, loss: np.ndarray, max_extrapolation: float
) -> tuple[tuple[float, float, float], float | None, float | None, str]:
    """Fit L = c2·u² + c1·u + c0 and return (coeffs, u*, L(u*), reason-if-unusable)."""
    c2, c1, c0 = np.polyfit(u, loss, 2)
    coeffs = (float(c2), float(c1), float(c0))
    if not c2 > 0:
        return coeffs, None, None, "parabola opens downward (no minimum); add runs around the optimum"
    u_star = -c1 / (2 * c2)
    l_star = c0 - c1 * c1 / (4 * c2)
    slack = math.log(max_extrapolation)
    if u_star < u.min() - slack or u_star > u.max() + slack:
        return coeffs, float(u_star), float(l_star), "optimum lies outside the sampled range"
    return coeffs, float(u_star), float(l_star), ""


def _budget_resampler(
    u: np.ndarray, loss: np.ndarray, method: Bootstrap
) -> Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray] | None]:
    """A function drawing one bootstrap sample of a budget's (ln x, loss); None if none was usable."""
    n = u.size
    if method is Bootstrap.RESIDUALS:
        fitted = np.polyval(np.polyfit(u, loss, 2), u)
        # Rescale so the resampled residuals have the unbiased variance (n − 3 degrees of freedom).
        resid = (loss - fitted) * math.sqrt(n / (n - 3)) if n > 3 else np.zeros(n)
        return lambda rng: (u, fitted + resid[rng.integers(0, n, n)])

    def draw_runs(rng: np.random.Generator):
        for _attempt in range(100):
            pick = rng.integers(0, n, n)
            if np.unique(u[pick]).size >= 3:  # fewer distinct x carry no curvature: redraw
                return u[pick], loss[pick]
        return None

    return draw_runs


def _group_budgets(flops: np.ndarray) -> list[np.ndarray]:
    """Row indices per budget, by value (relative tolerance 1e-6), sorted by budget."""
    order = np.argsort(flops, kind="stable")
    groups: list[list[int]] = []
    for i in order:
        if groups and math.isclose(flops[groups[-1][0]], flops[i], rel_tol=1e-6):
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return [np.array(g) for g in groups]


def _loglog_line(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of ln y against ln c."""
    slope, intercept = np.polyfit(np.log(c), np.log(y), 1)
    return float(slope), float(intercept)


def fit_isoflop(
    flops: Sequence[float] | np.ndarray,
    x: Sequence[float] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    *,
    variable: str = MEAN_RECURRENCE,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    max_extrapolation: float = 1.5,
    bootstrap: Bootstrap = Bootstrap.RUNS,
) -> IsoFlopFit:
    """Iso-FLOP parabolas per budget and the power law x*(C) = k·C^a with bootstrap intervals.

    `flops[i]` is the nominal budget of run i, `x[i]` its μ_rec (or tokens), `loss[i]` its final loss.
    A budget needs runs at ≥ 3 distinct x. Its optimum is left out of the power law (with a note) if
    the parabola opens downward or its vertex lies more than a factor `max_extrapolation` beyond the
    sampled x range, since such a vertex is not a measured optimum.

    The bootstrap (`n_boot` replicates, seeded) perturbs every budget, applies the same rules, refits
    the line and reports percentiles of the exponent and coefficient. `Bootstrap.RUNS` resamples runs
    within each budget with replacement (redrawing resamples with < 3 distinct x). It also reflects
    how much the optimum depends on which x were sampled, and with ~6 runs per budget its intervals
    are wide (conservative). `Bootstrap.RESIDUALS` keeps the design and resamples the parabola's
    residuals: the interval then reflects measurement noise only, assuming the parabola is right.
    """
    flops_a = positive("flops", flops)
    n = flops_a.shape[0]
    x_a = positive(variable, x, n)
    loss_a = positive("loss", loss, n)
    if not 0 < ci < 1:
        raise ConfigError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 0:
        raise ConfigError(f"n_boot must be >= 0, got {n_boot}")
    if max_extrapolation < 1:
        raise ConfigError(f"max_extrapolation must be >= 1, got {max_extrapolation}")

    u_a = np.log(x_a)
    budgets: list[BudgetOptimum] = []
    usable: list[tuple[float, np.ndarray, np.ndarray]] = []  # (C, u, loss) of the budgets in the fit
    for idx in _group_budgets(flops_a):
        c = float(flops_a[idx[0]])
        u, l = u_a[idx], loss_a[idx]
        if np.unique(u).size < 3:
            raise ConfigError(
                f"budget C={c:.4g} has runs at {np.unique(u).size} distinct {variable} value(s); "
                "a parabola needs at least 3"
            )
        coeffs, u_star, l_star, note = _parabola_vertex(u, l, max_extrapolation)
        budgets.append(
            BudgetOptimum(
                flops=c,
                x=np.exp(u).tolist(),
                loss=l.tolist(),
                coeffs=coeffs,
                optimum=math.exp(u_star) if u_star is not None and u_star < 700 else None,
                loss_at_optimum=l_star,
                used=not note,
                note=note,
            )
        )
        if not note:
            usable.append((c, u, l))
    if len(usable) < 2:
        notes = "; ".join(f"C={b.flops:.3g}: {b.note}" for b in budgets if not b.used)
        raise ConfigError(
            f"need usable optima at >= 2 budgets for a power law, got {len(usable)} "
            f"of {len(budgets)} budgets" + (f" ({notes})" if notes else "")
        )

    cs = np.array([b.flops for b in budgets if b.used])
    ys = np.array([b.optimum for b in budgets if b.used])
    slope, intercept = _loglog_line(cs, ys)
    r2 = metrics.r2(np.log(ys), intercept + slope * np.log(cs))

    rng = np.random.default_rng(seed)
    boot_a, boot_k = [], []
    resamplers = [(c, _budget_resampler(u, l, bootstrap)) for c, u, l in usable]
    for _ in range(n_boot):
        bc, by = [], []
        for c, draw in resamplers:
            sample = draw(rng)
            if sample is None:
                continue
            _, u_star, _, note = _parabola_vertex(*sample, max_extrapolation)
            if not note:
                bc.append(c)
                by.append(math.exp(u_star))
        if len(bc) >= 2:
            a, k = _loglog_line(np.array(bc), np.array(by))
            boot_a.append(a)
            boot_k.append(k)
    boot_a_arr, boot_k_arr = np.array(boot_a), np.array(boot_k)
    q = 100 * (1 - ci) / 2
    if boot_a_arr.size:
        a_lo, a_med, a_hi = np.percentile(boot_a_arr, [q, 50, 100 - q])
        k_lo, k_med, k_hi = np.exp(np.percentile(boot_k_arr, [q, 50, 100 - q]))
    else:
        a_lo = a_med = a_hi = k_lo = k_med = k_hi = float("nan")
    power_law = PowerLawFit(
        exponent=slope,
        coefficient=math.exp(intercept),
        r2=r2,
        exponent_median=float(a_med),
        exponent_ci=(float(a_lo), float(a_hi)),
        coefficient_median=float(k_med),
        coefficient_ci=(float(k_lo), float(k_hi)),
        ci_level=ci,
        n_boot=n_boot,
        n_valid=int(boot_a_arr.size),
        seed=seed,
        bootstrap=bootstrap,
        boot_exponents=boot_a_arr,
        boot_log_coefficients=boot_k_arr,
    )
    return IsoFlopFit(variable, budgets, power_law, max_extrapolation)
