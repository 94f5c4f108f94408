"""Iso-FLOP analysis (paper §5.2): where along a budget's runs the loss is lowest, and how that moves with C.

For every training-FLOP budget C, a parabola of loss against ln(x) (x = mean recurrence μ_rec, or
tokens D) locates the optimum x*(C) at its vertex. Then x* = k·C^a is fitted by least squares in
log-log space. The paper finds μ_rec* ∝ C^0.40 and D* ∝ C^0.78. numpy only.

Uncertainty, reported so that it is never falsely certain:

- A budget needs runs at ≥ 3 distinct x for a parabola. With exactly 3 the parabola passes through
  every run, so nothing measures how far its vertex is from the truth: the fit then reports the point
  estimate with no interval at all, and says why. Intervals need ≥ 4 distinct x in every budget used.
- Bootstrap interval (seeded): resample the runs within each budget with replacement (or, optionally,
  the parabola's residuals), refit every parabola and the power law, report the percentile interval.
  It measures how the optima move with the runs' noise.
- t interval: slope ± t(k − 2)·SE from the least-squares line through the k optima, i.e. from how far
  the optima scatter around the line, with Student's t for the few budgets there are (k ≥ 3). It also
  covers a scatter that the runs' noise does not explain.
- A vertex outside the sampled range is used with a warning if it lies within a factor
  `max_extrapolation` of it (else the budget is left out), and for every budget the share of bootstrap
  replicates in which its vertex was unusable (and so dropped) is reported.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from parcae_lm.errors import ConfigError
from parcae_lm.scaling import metrics
from parcae_lm.scaling.intervals import percentile_interval, t_quantile
from parcae_lm.scaling.table import MEAN_RECURRENCE, positive

MIN_DISTINCT_FOR_CI = 4  # distinct x per budget for any interval (3 fix a parabola exactly)
# A budget dropped from more replicates than this conditions the interval on the replicates where its
# vertex happened to be usable: say so (every budget's share is reported either way).
DROP_WARNING = 0.05


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
    distinct: int = 0  # distinct x values among its runs
    extrapolation: float = 1.0  # how far the vertex lies beyond the sampled range, as a factor (1: inside)
    boot_dropped: float | None = None  # share of bootstrap replicates whose vertex here was unusable

    def to_dict(self) -> dict:
        return {
            "flops": self.flops,
            "optimum": self.optimum,
            "loss_at_optimum": self.loss_at_optimum,
            "used": self.used,
            "note": self.note,
            "distinct": self.distinct,
            "extrapolation": self.extrapolation,
            "boot_dropped": self.boot_dropped,
            "coeffs": list(self.coeffs),
            "x": self.x,
            "loss": self.loss,
        }


@dataclass
class PowerLawFit:
    """y = coefficient · C^exponent, least squares in log-log space, with its intervals (None: no interval
    can be given, `ci_note` says why)."""

    exponent: float
    coefficient: float
    r2: float
    exponent_median: float | None  # of the bootstrap replicates
    exponent_ci: tuple[float, float] | None  # the reported interval: spans the bootstrap and t intervals
    exponent_ci_bootstrap: tuple[float, float] | None  # percentile interval of the replicates
    exponent_ci_t: tuple[float, float] | None  # slope ± t(k − 2)·SE
    exponent_se: float | None  # least-squares standard error of the slope (k − 2 degrees of freedom)
    coefficient_median: float | None
    coefficient_ci: tuple[float, float] | None  # spans the bootstrap and t intervals (of ln k)
    ci_level: float
    n_budgets: int  # optima in the line
    n_boot: int
    n_valid: int  # bootstrap replicates with ≥ 2 usable budgets
    seed: int
    bootstrap: Bootstrap
    ci_note: str = ""
    boot_exponents: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    boot_log_coefficients: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    def predict(self, flops: float | np.ndarray) -> np.ndarray:
        return self.coefficient * np.asarray(flops, dtype=np.float64) ** self.exponent

    def band(self, flops: float | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise bootstrap interval of the fitted line at `flops` (level `ci_level`); None without one."""
        if self.boot_exponents.size == 0:
            return None
        c = np.log(np.atleast_1d(np.asarray(flops, dtype=np.float64)))
        logs = self.boot_log_coefficients[:, None] + self.boot_exponents[:, None] * c[None, :]
        q = 100 * (1 - self.ci_level) / 2
        lo, hi = np.percentile(logs, [q, 100 - q], axis=0)
        return np.exp(lo), np.exp(hi)

    def to_dict(self) -> dict:
        def pair(v: tuple[float, float] | None) -> list[float] | None:
            return None if v is None else list(v)

        return {
            "exponent": self.exponent,
            "coefficient": self.coefficient,
            "r2": self.r2,
            "exponent_median": self.exponent_median,
            "exponent_ci": pair(self.exponent_ci),
            "exponent_ci_bootstrap": pair(self.exponent_ci_bootstrap),
            "exponent_ci_t": pair(self.exponent_ci_t),
            "exponent_se": self.exponent_se,
            "coefficient_median": self.coefficient_median,
            "coefficient_ci": pair(self.coefficient_ci),
            "ci_level": self.ci_level,
            "ci_note": self.ci_note,
            "n_budgets": self.n_budgets,
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
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "variable": self.variable,
            "law": f"{self.variable}* = coefficient * C^exponent",
            "max_extrapolation": self.max_extrapolation,
            "warnings": self.warnings,
            "power_law": self.power_law.to_dict(),
            "budgets": [b.to_dict() for b in self.budgets],
        }


@dataclass(frozen=True)
class _Vertex:
    coeffs: tuple[float, float, float]
    u_star: float | None
    loss: float | None
    extrapolation: float  # factor beyond the sampled range (1.0 inside)
    note: str  # why the vertex is unusable ("" if usable)


def _parabola_vertex(u: np.ndarray, loss: np.ndarray, max_extrapolation: float) -> _Vertex:
    """Fit L = c2·u² + c1·u + c0 and locate its vertex u*."""
    c2, c1, c0 = np.polyfit(u, loss, 2)
    coeffs = (float(c2), float(c1), float(c0))
    if not c2 > 0:
        return _Vertex(
            coeffs, None, None, math.inf, "parabola opens downward (no minimum); add runs around the optimum"
        )
    u_star = float(-c1 / (2 * c2))
    l_star = float(c0 - c1 * c1 / (4 * c2))
    beyond = max(u.min() - u_star, u_star - u.max(), 0.0)
    factor = math.exp(min(beyond, 700.0))
    if beyond > math.log(max_extrapolation):
        return _Vertex(coeffs, u_star, l_star, factor, "optimum lies outside the sampled range")
    return _Vertex(coeffs, u_star, l_star, factor, "")


def _bootstrap_vertices(
    u: np.ndarray,
    loss: np.ndarray,
    method: Bootstrap,
    n_boot: int,
    rng: np.random.Generator,
    max_extrapolation: float,
) -> np.ndarray:
    """ln x* of one budget's parabola in each of `n_boot` bootstrap samples (NaN where it is unusable:
    no minimum, a vertex too far outside the sample's range, or no resample with ≥ 3 distinct x).

    All samples are fitted at once through the normal equations of the parabola in u − mean(u)
    (centred, so they stay well conditioned for u = ln D ≈ 20)."""
    n = u.size
    centre = float(u.mean())
    uc = u - centre
    powers = np.stack([uc**k for k in range(5)])  # [5, n]: u^0 .. u^4
    if method is Bootstrap.RESIDUALS:
        fitted = np.polyval(np.polyfit(uc, loss, 2), uc)
        # Rescale so the resampled residuals have the unbiased variance (n − 3 degrees of freedom).
        resid = (loss - fitted) * math.sqrt(n / (n - 3))
        weights = np.ones((n_boot, n))
        y = fitted + resid[rng.integers(0, n, (n_boot, n))]
        valid = np.ones(n_boot, dtype=bool)
    else:
        groups = np.unique(u, return_inverse=True)[1]  # distinct-x group of each run
        weights = np.zeros((n_boot, n))
        valid = np.zeros(n_boot, dtype=bool)
        todo = np.arange(n_boot)
        for _attempt in range(100):  # fewer than 3 distinct x carry no curvature: redraw those
            picks = rng.integers(0, n, (todo.size, n))
            w = np.zeros((todo.size, n))
            np.add.at(w, (np.repeat(np.arange(todo.size), n), picks.ravel()), 1.0)
            distinct = (np.stack([w[:, groups == g].sum(1) for g in range(groups.max() + 1)], 1) > 0).sum(1)
            ok = distinct >= 3
            weights[todo[ok]], valid[todo[ok]] = w[ok], True
            todo = todo[~ok]
            if not todo.size:
                break
        y = np.broadcast_to(loss, (n_boot, n))
    s = weights @ powers.T  # [B, 5]: Σ w·u^k
    t = (weights * y) @ powers[:3].T  # [B, 3]: Σ w·y·u^k
    normal = np.stack(
        [
            np.stack([s[:, 4], s[:, 3], s[:, 2]], -1),
            np.stack([s[:, 3], s[:, 2], s[:, 1]], -1),
            np.stack([s[:, 2], s[:, 1], s[:, 0]], -1),
        ],
        1,
    )  # rows for (c2, c1, c0)
    rhs = np.stack([t[:, 2], t[:, 1], t[:, 0]], -1)
    out = np.full(n_boot, np.nan)
    good = valid
    coeffs = np.linalg.solve(normal[good], rhs[good][..., None])[..., 0] if good.any() else np.empty((0, 3))
    c2, c1 = coeffs[:, 0], coeffs[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        u_star = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
    present = weights[good] > 0
    lo = np.where(present, uc, np.inf).min(1)
    hi = np.where(present, uc, -np.inf).max(1)
    slack = math.log(max_extrapolation)
    u_star = np.where((u_star >= lo - slack) & (u_star <= hi + slack), u_star, np.nan)
    out[good] = u_star + centre
    return out


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


@dataclass(frozen=True)
class _TLine:
    slope_se: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]


def _t_line(c: np.ndarray, y: np.ndarray, ci: float) -> _TLine | None:
    """Intervals of the log-log line from the scatter of its k points: estimate ± t(k − 2)·SE (k ≥ 3)."""
    k = c.size
    if k < 3:
        return None
    lx, ly = np.log(c), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    s2 = float(resid @ resid) / (k - 2)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    se_slope = math.sqrt(s2 / sxx)
    se_intercept = math.sqrt(s2 * (1 / k + lx.mean() ** 2 / sxx))
    t = t_quantile(0.5 + ci / 2, k - 2)
    return _TLine(
        se_slope,
        (float(slope - t * se_slope), float(slope + t * se_slope)),
        (float(intercept - t * se_intercept), float(intercept + t * se_intercept)),
    )


def _hull(a: tuple[float, float] | None, b: tuple[float, float] | None) -> tuple[float, float] | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), max(a[1], b[1])


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
    """Iso-FLOP parabolas per budget and the power law x*(C) = k·C^a with its intervals (module docstring).

    `flops[i]` is the nominal budget of run i, `x[i]` its μ_rec (or tokens), `loss[i]` its final loss.
    A budget needs runs at ≥ 3 distinct x (≥ 4 for intervals). Its optimum is left out of the power law
    (with a note) if the parabola opens downward or its vertex lies more than a factor
    `max_extrapolation` beyond the sampled x range.

    The bootstrap (`n_boot` replicates, seeded) perturbs every budget, applies the same rules, refits
    the line and reports percentiles of the exponent and coefficient. `Bootstrap.RUNS` resamples runs
    within each budget with replacement (redrawing resamples with < 3 distinct x); with ~6 runs per
    budget its intervals are wide (conservative). `Bootstrap.RESIDUALS` keeps the design and resamples
    the parabola's residuals: the interval then reflects measurement noise only, assuming the parabola
    is right.
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
    usable: list[tuple[int, float, np.ndarray, np.ndarray]] = []  # (budget index, C, u, loss) in the fit
    warnings: list[str] = []
    for idx in _group_budgets(flops_a):
        c = float(flops_a[idx[0]])
        u, l = u_a[idx], loss_a[idx]
        distinct = int(np.unique(u).size)
        if distinct < 3:
            raise ConfigError(
                f"budget C={c:.4g} has runs at {distinct} distinct {variable} value(s); a parabola needs at least 3"
            )
        v = _parabola_vertex(u, l, max_extrapolation)
        budgets.append(
            BudgetOptimum(
                flops=c,
                x=np.exp(u).tolist(),
                loss=l.tolist(),
                coeffs=v.coeffs,
                optimum=math.exp(v.u_star) if v.u_star is not None and v.u_star < 700 else None,
                loss_at_optimum=v.loss,
                used=not v.note,
                note=v.note,
                distinct=distinct,
                extrapolation=v.extrapolation,
            )
        )
        if not v.note:
            usable.append((len(budgets) - 1, c, u, l))
            if v.extrapolation > 1:
                warnings.append(
                    f"C={c:.3g}: the optimum {variable}*={budgets[-1].optimum:.4g} is extrapolated "
                    f"{v.extrapolation:.2f}x beyond the sampled range [{math.exp(u.min()):.4g}, "
                    f"{math.exp(u.max()):.4g}]: it is not a measured optimum"
                )
    if len(usable) < 2:
        notes = "; ".join(f"C={b.flops:.3g}: {b.note}" for b in budgets if not b.used)
        raise ConfigError(
            f"need usable optima at >= 2 budgets for a power law, got {len(usable)} "
            f"of {len(budgets)} budgets" + (f" ({notes})" if notes else "")
        )
    for b in budgets:
        if not b.used:
            warnings.append(f"C={b.flops:.3g} left out of the power law: {b.note}")

    cs = np.array([b.flops for b in budgets if b.used])
    ys = np.array([b.optimum for b in budgets if b.used])
    slope, intercept = _loglog_line(cs, ys)
    r2 = metrics.r2(np.log(ys), intercept + slope * np.log(cs))

    exact = [budgets[i].flops for i, *_ in usable if budgets[i].distinct < MIN_DISTINCT_FOR_CI]
    ci_note = ""
    if exact:
        ci_note = (
            f"no interval: budget(s) C={', '.join(f'{c:.3g}' for c in exact)} have runs at only 3 distinct "
            f"{variable} values, so their parabolas pass through every run and nothing measures how far "
            f"the vertices are from the truth (need >= {MIN_DISTINCT_FOR_CI} distinct values per budget)"
        )
        warnings.append(ci_note)
        n_boot_run, t_line = 0, None
    else:
        n_boot_run, t_line = n_boot, _t_line(cs, ys, ci)
        if t_line is None:
            ci_note = "bootstrap interval only: the t interval needs optima at >= 3 budgets"

    rng = np.random.default_rng(seed)
    boot_a_arr, boot_k_arr = np.empty(0), np.empty(0)
    dropped = np.zeros(len(budgets))
    if n_boot_run:
        log_c = np.log([c for _, c, _, _ in usable])
        vertices = np.stack(
            [
                _bootstrap_vertices(u, l, bootstrap, n_boot_run, rng, max_extrapolation)
                for _, _, u, l in usable
            ],
            1,
        )  # [B, budgets in the fit]: ln x*
        for j, (i, *_) in enumerate(usable):
            dropped[i] = np.isnan(vertices[:, j]).sum()
        ok = ~np.isnan(vertices)
        keep = ok.sum(1) >= 2  # a line needs two optima
        # least-squares line of ln x* on ln C per replicate, over its usable budgets
        w = ok[keep].astype(float)
        v = np.where(ok[keep], vertices[keep], 0.0)
        sw, sx, sy = w.sum(1), w @ log_c, v.sum(1)
        sxx, sxy = w @ log_c**2, v @ log_c
        boot_a_arr = (sw * sxy - sx * sy) / (sw * sxx - sx**2)
        boot_k_arr = (sy - boot_a_arr * sx) / sw
    if n_boot_run:
        for i, *_ in usable:
            budgets[i].boot_dropped = float(dropped[i] / n_boot_run)
            if dropped[i] >= DROP_WARNING * n_boot_run:
                warnings.append(
                    f"C={budgets[i].flops:.3g}: the bootstrap dropped this budget's optimum in "
                    f"{100 * dropped[i] / n_boot_run:.1f}% of replicates (no minimum, or one too far outside "
                    "the resampled range), so the interval rests on the replicates where it was usable"
                )
    a_boot = k_boot = None
    a_med = k_med = None
    if boot_a_arr.size:
        a_boot, k_boot = percentile_interval(boot_a_arr, ci), percentile_interval(boot_k_arr, ci)
        a_med, k_med = float(np.median(boot_a_arr)), math.exp(float(np.median(boot_k_arr)))
    # The reported interval spans both: each misses what the other measures (module docstring).
    a_ci = _hull(a_boot, t_line.slope_ci if t_line else None)
    log_k_ci = _hull(k_boot, t_line.intercept_ci if t_line else None)
    power_law = PowerLawFit(
        exponent=slope,
        coefficient=math.exp(intercept),
        r2=r2,
        exponent_median=a_med,
        exponent_ci=a_ci,
        exponent_ci_bootstrap=a_boot,
        exponent_ci_t=t_line.slope_ci if t_line else None,
        exponent_se=t_line.slope_se if t_line else None,
        coefficient_median=k_med,
        coefficient_ci=None if log_k_ci is None else (math.exp(log_k_ci[0]), math.exp(log_k_ci[1])),
        ci_level=ci,
        n_budgets=int(cs.size),
        n_boot=n_boot_run,
        n_valid=int(boot_a_arr.size),
        seed=seed,
        bootstrap=bootstrap,
        ci_note=ci_note,
        boot_exponents=boot_a_arr,
        boot_log_coefficients=boot_k_arr,
    )
    return IsoFlopFit(variable, budgets, power_law, max_extrapolation, warnings)
