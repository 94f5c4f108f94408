"""Scaling-law fits for looped LMs (Prairie et al. 2026, "Parcae", §5.2-5.3 and Appendices K, L, N, O).

Four fits, each returning a dataclass with `to_dict()` (JSON-ready) and `to_markdown()`:

1. `fit_isoflop` - iso-FLOP analysis. For every training-FLOP budget C, a parabola of loss against
   ln(x) (x = mean recurrence μ_rec, or tokens D) locates the optimum x*(C) at its vertex. Then
   x* = k·C^a is fitted by least squares in log-log space. Confidence intervals come from a seeded
   bootstrap: resample the runs within each budget with replacement (or, optionally, the parabola's
   residuals), refit every parabola and the power law, report median and percentile interval. The
   paper finds μ_rec* ∝ C^0.40 and D* ∝ C^0.78 (§5.2).
2. `fit_parametric` - the Chinchilla-style law of Eq. 7, L̂ = E + A·N_eff^(−α) + B·D^(−β), with
   N_eff = `effective_params(...)`. Fitted like Hoffmann et al. (2022) and the paper: Huber loss on
   log-loss residuals, best of many initialisations (they use L-BFGS; we use a bounded trust-region
   solver on the same objective, see `_fit_lse_huber`).
3. `fit_test_time` - the per-model test-time law of §5.3, L(T) = L∞ + Z·exp(−z·T), by nonlinear least
   squares with standard errors and R².
4. `fit_unified` - the unified law of Eqs. 4/8, L̂(T | μ_rec, D) = E + X·N(μ_rec)^(−x) + Y·D^(−y)
   + Z·exp(−z·T/μ_rec^γ), γ = 1 as in the paper (optionally learned), fitted like (2).

Runs come from a CSV or JSONL table, one run (or one evaluation) per row; `RunTable` reads it and
checks columns. Default column names, used by `parcae fit` unless overridden by flags:

    flops            nominal training-FLOP budget C (runs of one budget share the exact same value)
    mean_recurrence  μ_rec, the mean training recurrence
    tokens           training tokens D
    n_eff            effective (unrolled) parameter count N(μ_rec), see `effective_params`
    num_steps        test-time recurrence T (test-time and unified laws)
    val_loss         validation loss L (at T = μ_rec for the iso-FLOP and parametric fits)

scipy is an optional extra: `pip install 'parcae-lm[scaling]'`. It is imported inside the fits that
need it; numpy alone covers the iso-FLOP analysis.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parcae_lm.errors import ConfigError

FLOPS = "flops"
MEAN_RECURRENCE = "mean_recurrence"
TOKENS = "tokens"
N_EFF = "n_eff"
NUM_STEPS = "num_steps"
LOSS = "val_loss"

# Hoffmann et al. (2022) use δ = 1e-3 for the Huber loss on log-loss residuals; so do we by default.
HUBER_DELTA = 1e-3


def _require_scipy_optimize():
    try:
        import scipy.optimize
    except ImportError as e:
        raise ConfigError(
            "this fit needs scipy, which is an optional extra: pip install 'parcae-lm[scaling]'"
        ) from e
    return scipy.optimize


# ---------------------------------------------------------------------------------------------------
# Input table and validation


@dataclass
class RunTable:
    """Rows of a results table (CSV or JSONL), with checked numeric column access."""

    rows: list[dict[str, object]]
    source: str = "<records>"

    @classmethod
    def read(cls, path: str | Path) -> RunTable:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"results table {path} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows: list[dict[str, object]] = [dict(r) for r in csv.DictReader(f)]
        elif suffix in (".jsonl", ".ndjson"):
            rows = []
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
                    if not isinstance(row, dict):
                        raise ConfigError(f"{path}:{lineno}: expected a JSON object per line")
                    rows.append(row)
        else:
            raise ConfigError(f"results table {path}: expected a .csv or .jsonl file, got '{suffix}'")
        if not rows:
            raise ConfigError(f"results table {path} has no rows")
        return cls(rows, str(path))

    @property
    def columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def has(self, name: str) -> bool:
        return any(name in row for row in self.rows)

    def raw(self, name: str) -> list[object]:
        self._check(name)
        return [row.get(name) for row in self.rows]

    def numeric(self, name: str) -> np.ndarray:
        """Column `name` as float64; every row must hold a finite number."""
        self._check(name)
        out = np.empty(len(self.rows))
        for i, row in enumerate(self.rows):
            value = row.get(name)
            try:
                if value is None or value == "" or isinstance(value, bool):
                    raise ValueError
                out[i] = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{self.source}: row {i + 1}, column '{name}': expected a number, got {value!r}"
                ) from None
            if not math.isfinite(out[i]):
                raise ConfigError(f"{self.source}: row {i + 1}, column '{name}' is {out[i]} (not finite)")
        return out

    def _check(self, name: str) -> None:
        if not self.has(name):
            raise ConfigError(
                f"{self.source}: missing column '{name}' (columns present: {', '.join(self.columns)})"
            )


def _positive(name: str, values: Sequence[float] | np.ndarray, n: int | None = None) -> np.ndarray:
    """A 1-D float array of finite positive values (they all go through a logarithm)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ConfigError(f"'{name}' must be one-dimensional, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ConfigError(f"'{name}' has {arr.shape[0]} values but the other columns have {n}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(
            f"'{name}' has non-finite values at rows {np.flatnonzero(~np.isfinite(arr)).tolist()}"
        )
    if np.any(arr <= 0):
        bad = np.flatnonzero(arr <= 0)
        raise ConfigError(
            f"'{name}' must be positive (it is used in a logarithm); rows {bad.tolist()} hold {arr[bad].tolist()}"
        )
    return arr


def effective_params(core_params: float, other_params: float, mean_recurrence: float | np.ndarray):
    """N(μ_rec): the parameter count of the model with all loops unrolled (paper §5.2, Eq. 7).

    The paper defines N(μ_rec) as the "effective parameter count ... if you were to unroll all loops":
    the recurrent core appears μ_rec times, everything else once, so

        N(μ_rec) = other_params + μ_rec · core_params.

    The paper does not say whether embedding tables count towards `other_params`; its FLOP count
    (Appendix D) excludes embeddings and includes the unembedding, which is the natural choice here
    too. Pass the counts you want compared across runs; they only need to be consistent.
    """
    mu = np.asarray(mean_recurrence, dtype=np.float64)
    if core_params <= 0 or other_params < 0:
        raise ConfigError(
            f"effective_params: need core_params > 0 and other_params >= 0, got {core_params}, {other_params}"
        )
    if np.any(mu <= 0) or not np.all(np.isfinite(mu)):
        raise ConfigError(f"effective_params: mean_recurrence must be finite and positive, got {mu}")
    return other_params + mu * core_params


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")


def _fmt(v: float, digits: int = 4) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


# ---------------------------------------------------------------------------------------------------
# 1. Iso-FLOP analysis


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

    def to_markdown(self) -> str:
        p = self.power_law
        pct = round(100 * p.ci_level)
        lines = [
            f"**{self.variable}\\* ∝ C^a**: a = {p.exponent:.4f} (bootstrap median {p.exponent_median:.4f}, "
            f"{pct}% CI [{p.exponent_ci[0]:.4f}, {p.exponent_ci[1]:.4f}], "
            f"{p.n_valid}/{p.n_boot} {p.bootstrap.value}-bootstrap replicates), coefficient = {p.coefficient:.4g}, R² = {_fmt(p.r2)}",
            "",
            f"| budget C | runs | {self.variable}* | loss at optimum | used |",
            "|---|---|---|---|---|",
        ]
        for b in self.budgets:
            used = "yes" if b.used else f"no: {b.note}"
            lines.append(
                f"| {b.flops:.3g} | {len(b.x)} | {_fmt(b.optimum) if b.optimum else '-'} | "
                f"{_fmt(b.loss_at_optimum) if b.loss_at_optimum else '-'} | {used} |"
            )
        return "\n".join(lines) + "\n"


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


class Bootstrap(enum.Enum):
    """How the iso-FLOP bootstrap perturbs a budget's runs."""

    RUNS = "runs"  # resample runs with replacement (robust to a wrong parabola; conservative with few runs)
    RESIDUALS = "residuals"  # keep the design, resample parabola residuals (calibrated if the parabola holds)


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
    flops_a = _positive("flops", flops)
    n = flops_a.shape[0]
    x_a = _positive(variable, x, n)
    loss_a = _positive("loss", loss, n)
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
    r2 = _r2(np.log(ys), intercept + slope * np.log(cs))

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


# ---------------------------------------------------------------------------------------------------
# Shared machinery for the parametric and unified laws: log L̂ = logsumexp of terms, Huber on log-loss.
#
# Writing every additive term as exp(t_k) with t_k linear in its log-coefficient keeps all terms
# positive and makes the Huber objective smooth, as in Hoffmann et al. (2022). Power-law features
# are centred (ln N − ln N₀) before fitting: the log-coefficient then means "size of the term at the
# data's geometric centre", which decorrelates it from the exponent and bounds a sensible init range.


# A term function maps parameters θ [..., P] to terms t [..., n, K] and, when asked, dt/dθ [n, K, P].
TermFn = Callable[[np.ndarray, bool], tuple[np.ndarray, np.ndarray | None]]


def _logsumexp(t: np.ndarray) -> np.ndarray:
    m = t.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(t - m).sum(axis=-1, keepdims=True)))[..., 0]


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclass
class _LSEFitResult:
    theta: np.ndarray
    huber: float  # mean Huber loss over points (unscaled)
    converged: bool
    n_starts: int


def _fit_lse_huber(
    terms: TermFn,
    log_loss: np.ndarray,
    init_low: np.ndarray,
    init_high: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    *,
    delta: float,
    n_starts: int,
    n_candidates: int,
    seed: int,
    max_evals: int,
) -> _LSEFitResult:
    """Minimise Σ Huber_δ(logsumexp(terms(θ)) − ln L) from the best of many random initialisations.

    `n_candidates` seeded uniform draws in [init_low, init_high] are scored in one vectorised pass;
    a bounded trust-region solver (scipy `least_squares`, loss="huber", f_scale=δ, which is exactly
    the Huber objective) starts from the `n_starts` best, and the lowest final objective wins. The
    paper used L-BFGS on the same objective; L-BFGS-B turned out ~20× slower here because its tiny
    BLAS calls contend for threads on a busy machine, and the minimum it reaches is the same.
    """
    opt = _require_scipy_optimize()

    def residuals(theta: np.ndarray) -> np.ndarray:
        t, _ = terms(theta, False)
        return _logsumexp(t) - log_loss

    def jacobian(theta: np.ndarray) -> np.ndarray:
        t, jac = terms(theta, True)
        w = np.exp(t - _logsumexp(t)[:, None])  # d logsumexp / d t_k (softmax weights)
        return np.einsum("nk,nkp->np", w, jac)

    rng = np.random.default_rng(seed)
    cand = rng.uniform(init_low, init_high, size=(n_candidates, init_low.size))
    scores = np.empty(n_candidates)
    for s in range(0, n_candidates, 256):  # chunks keep memory at ~256·n·K floats
        t, _ = terms(cand[s : s + 256], False)
        scores[s : s + 256] = _huber(_logsumexp(t) - log_loss, delta).mean(axis=-1)
    starts = cand[np.argsort(scores)[:n_starts]]

    best, best_obj = None, math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in exp during wild trial steps
        for theta0 in starts:
            res = opt.least_squares(
                residuals,
                theta0,
                jac=jacobian,
                bounds=bounds,
                loss="huber",
                f_scale=delta,
                x_scale="jac",
                xtol=1e-12,
                ftol=1e-12,
                gtol=1e-12,
                max_nfev=max_evals,
            )
            obj = float(_huber(res.fun, delta).mean())
            if math.isfinite(obj) and obj < best_obj:
                best, best_obj = res, obj
    if best is None:
        raise ConfigError("the Huber fit diverged from every initialisation (check the loss column)")
    return _LSEFitResult(best.x, best_obj, bool(best.status > 0), len(starts))


def _check_lse_settings(delta: float, n_starts: int, n_candidates: int, max_evals: int) -> None:
    if not delta > 0:
        raise ConfigError(f"Huber delta must be > 0, got {delta}")
    if n_starts < 1 or n_candidates < n_starts:
        raise ConfigError(f"need 1 <= n_starts <= n_candidates, got {n_starts}, {n_candidates}")
    if max_evals < 1:
        raise ConfigError(f"max_evals must be >= 1, got {max_evals}")


# ---------------------------------------------------------------------------------------------------
# 2. Parametric law L = E + A·N_eff^(−α) + B·D^(−β)


@dataclass
class ParametricFit:
    """L̂(N_eff, D) = E + A·N_eff^(−alpha) + B·D^(−beta) (paper Eq. 7)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    huber: float  # mean Huber loss of log-residuals at the optimum
    delta: float
    mean_abs_rel_error: float  # mean |L̂ − L| / L
    r2: float
    n_points: int
    n_starts: int
    converged: bool

    def predict(self, n_eff: float | np.ndarray, tokens: float | np.ndarray) -> np.ndarray:
        n_eff, tokens = np.asarray(n_eff, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
        return self.E + self.A * n_eff ** (-self.alpha) + self.B * tokens ** (-self.beta)

    def to_dict(self) -> dict:
        return {"law": "L = E + A * N_eff^(-alpha) + B * D^(-beta)", **_plain_fields(self)}

    def to_markdown(self) -> str:
        return (
            "**L = E + A·N_eff^(−α) + B·D^(−β)**\n\n"
            "| E | A | α | B | β | Huber | mean abs rel err | R² | points |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
            f"| {self.E:.4f} | {self.A:.6g} | {self.alpha:.4f} | {self.B:.6g} | {self.beta:.4f} | "
            f"{self.huber:.3g} | {100 * self.mean_abs_rel_error:.3f}% | {_fmt(self.r2)} | {self.n_points} |\n"
        )


def _plain_fields(obj) -> dict:
    return {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(obj).items() if not k.startswith("_")
    }


def fit_parametric(
    n_eff: Sequence[float] | np.ndarray,
    tokens: Sequence[float] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    *,
    delta: float = HUBER_DELTA,
    n_starts: int = 32,
    n_candidates: int = 4096,
    seed: int = 0,
    max_evals: int = 10_000,
) -> ParametricFit:
    """Fit L = E + A·N_eff^(−α) + B·D^(−β) (paper Eq. 7, Chinchilla approach 3).

    Minimises the Huber loss (δ = `delta`) between ln L̂ and ln L, started from the `n_starts` best of
    `n_candidates` seeded random initialisations (the paper: L-BFGS, best of 500 restarts; screening
    many candidates first gets the same robustness for less time; see `_fit_lse_huber` for the
    solver). Exponents are kept in [0, 4]. Needs at least 6 points (5 parameters + 1).
    """
    _check_lse_settings(delta, n_starts, n_candidates, max_evals)
    n_a = _positive("n_eff", n_eff)
    d_a = _positive("tokens", tokens, n_a.size)
    l_a = _positive("loss", loss, n_a.size)
    if n_a.size < 6:
        raise ConfigError(f"the parametric law has 5 parameters; need at least 6 runs, got {n_a.size}")
    ln_n0, ln_d0 = float(np.log(n_a).mean()), float(np.log(d_a).mean())
    fn, fd = np.log(n_a) - ln_n0, np.log(d_a) - ln_d0

    def terms(theta: np.ndarray, jac: bool):
        # θ = (e, a', α, b', β): t = [e, a' − α·fn, b' − β·fd]
        th = theta[..., None, :]
        t = np.stack(
            [
                np.broadcast_to(th[..., 0], th.shape[:-2] + fn.shape),
                th[..., 1] - th[..., 2] * fn,
                th[..., 3] - th[..., 4] * fd,
            ],
            axis=-1,
        )
        if not jac:
            return t, None
        j = np.zeros((fn.size, 3, 5))
        j[:, 0, 0] = 1
        j[:, 1, 1], j[:, 1, 2] = 1, -fn
        j[:, 2, 3], j[:, 2, 4] = 1, -fd
        return t, j

    low = np.array([np.log(l_a.min()) - 1.5, -6.0, 0.05, -6.0, 0.05])
    high = np.array([np.log(l_a.min()), 1.5, 2.0, 1.5, 2.0])
    bounds = (np.array([-20.0, -30.0, 0.0, -30.0, 0.0]), np.array([10.0, 10.0, 4.0, 10.0, 4.0]))
    res = _fit_lse_huber(
        terms,
        np.log(l_a),
        low,
        high,
        bounds,
        delta=delta,
        n_starts=n_starts,
        n_candidates=n_candidates,
        seed=seed,
        max_evals=max_evals,
    )
    e, a_c, alpha, b_c, beta = (float(v) for v in res.theta)
    fit = ParametricFit(
        E=math.exp(e),
        A=math.exp(a_c + alpha * ln_n0),
        alpha=alpha,
        B=math.exp(b_c + beta * ln_d0),
        beta=beta,
        huber=res.huber,
        delta=delta,
        mean_abs_rel_error=0.0,
        r2=0.0,
        n_points=int(n_a.size),
        n_starts=res.n_starts,
        converged=res.converged,
    )
    pred = fit.predict(n_a, d_a)
    fit.mean_abs_rel_error = float(np.mean(np.abs(pred - l_a) / l_a))
    fit.r2 = _r2(l_a, pred)
    return fit


# ---------------------------------------------------------------------------------------------------
# 3. Test-time law L(T) = L∞ + Z·exp(−z·T)


@dataclass
class TestTimeFit:
    """L(T) = L_inf + Z·exp(−z·T) for one model evaluated at test-time recurrences T (paper §5.3)."""

    __test__ = False  # not a pytest test class

    label: str
    L_inf: float
    Z: float
    z: float
    L_inf_se: float
    Z_se: float
    z_se: float
    r2: float
    rmse: float
    n_points: int
    steps: list[float]
    loss: list[float]

    def predict(self, steps: float | np.ndarray) -> np.ndarray:
        return self.L_inf + self.Z * np.exp(-self.z * np.asarray(steps, dtype=np.float64))

    def to_dict(self) -> dict:
        return {"law": "L(T) = L_inf + Z * exp(-z * T)", **_plain_fields(self)}


@dataclass
class TestTimeFits:
    """Test-time law fits for several models (one per group, e.g. per training μ_rec)."""

    __test__ = False  # not a pytest test class

    group_column: str | None
    fits: list[TestTimeFit]

    def to_dict(self) -> dict:
        return {"group_column": self.group_column, "fits": [f.to_dict() for f in self.fits]}

    def to_markdown(self) -> str:
        lines = [
            "**L(T) = L∞ + Z·exp(−z·T)** (± standard errors)",
            "",
            f"| {self.group_column or 'model'} | L∞ | Z | z | R² | RMSE | points |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in self.fits:
            lines.append(
                f"| {f.label} | {f.L_inf:.4f} ± {_fmt(f.L_inf_se, 2)} | {f.Z:.4f} ± {_fmt(f.Z_se, 2)} | "
                f"{f.z:.4f} ± {_fmt(f.z_se, 2)} | {_fmt(f.r2)} | {f.rmse:.3g} | {f.n_points} |"
            )
        return "\n".join(lines) + "\n"


def fit_test_time(
    steps: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray, *, label: str = ""
) -> TestTimeFit:
    """Fit L(T) = L∞ + Z·exp(−z·T) by least squares (scipy `curve_fit`, trust-region reflective).

    The model is linear in (L∞, Z) for fixed z, so the start is the best z on a log grid in
    [1e-3, 20] with (L∞, Z) solved exactly; `curve_fit` then refines all three within bounds
    L∞ ≥ 0 and 0 ≤ z ≤ 50 (Z is free, so a loss that rises with T is fitted too, with Z < 0).
    Standard errors are the square roots of the covariance diagonal (scaled by the residual
    variance); they are NaN when a parameter is not identified. Needs ≥ 4 distinct T.
    """
    opt = _require_scipy_optimize()
    t_a = _positive("num_steps", steps)
    l_a = _positive("loss", loss, t_a.size)
    if np.unique(t_a).size < 4:
        raise ConfigError(
            f"test-time fit{f' for {label}' if label else ''}: the law has 3 parameters; need losses at >= 4 "
            f"distinct T, got {np.unique(t_a).size}"
        )

    def model(t, l_inf, z_amp, z_rate):
        return l_inf + z_amp * np.exp(-z_rate * t)

    best = None
    for z0 in np.geomspace(1e-3, 20, 120):
        basis = np.stack([np.ones_like(t_a), np.exp(-z0 * t_a)], axis=1)
        coef, *_ = np.linalg.lstsq(basis, l_a, rcond=None)
        sse = float(np.sum((basis @ coef - l_a) ** 2))
        if best is None or sse < best[0]:
            best = (sse, max(float(coef[0]), 0.0), float(coef[1]), float(z0))
    p0 = best[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", opt.OptimizeWarning)  # singular covariance -> NaN SEs below
        popt, pcov = opt.curve_fit(
            model, t_a, l_a, p0=p0, bounds=([0.0, -np.inf, 0.0], [np.inf, np.inf, 50.0]), maxfev=20_000
        )
    se = np.sqrt(np.where(np.diag(pcov) >= 0, np.diag(pcov), np.nan))
    pred = model(t_a, *popt)
    order = np.argsort(t_a, kind="stable")
    return TestTimeFit(
        label=label,
        L_inf=float(popt[0]),
        Z=float(popt[1]),
        z=float(popt[2]),
        L_inf_se=float(se[0]),
        Z_se=float(se[1]),
        z_se=float(se[2]),
        r2=_r2(l_a, pred),
        rmse=float(np.sqrt(np.mean((pred - l_a) ** 2))),
        n_points=int(t_a.size),
        steps=t_a[order].tolist(),
        loss=l_a[order].tolist(),
    )


def _group_label(value: object) -> str:
    """Numbers as '%g' so that 4, 4.0 and "4" (CSV) name the same group; anything else as str."""
    try:
        return f"{float(value):g}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def fit_test_time_groups(
    steps: np.ndarray, loss: np.ndarray, groups: Sequence[object] | None, *, group_column: str | None
) -> TestTimeFits:
    """One `fit_test_time` per distinct value of `groups` (all rows form one group if None)."""
    if groups is None:
        return TestTimeFits(None, [fit_test_time(steps, loss, label="all")])
    labels = [_group_label(g) for g in groups]
    keys = list(dict.fromkeys(labels))
    with contextlib.suppress(ValueError):  # numeric groups (e.g. μ_rec) in numeric order
        keys.sort(key=float)
    labels_a = np.array(labels)
    steps, loss = np.asarray(steps), np.asarray(loss)
    fits = []
    for key in keys:
        mask = labels_a == key
        fits.append(fit_test_time(steps[mask], loss[mask], label=f"{group_column}={key}"))
    return TestTimeFits(group_column, fits)


# ---------------------------------------------------------------------------------------------------
# 4. Unified law L(T | μ_rec, D) = E + X·N(μ_rec)^(−x) + Y·D^(−y) + Z·exp(−z·T/μ_rec^γ)


@dataclass
class UnifiedFit:
    """L̂(T | μ_rec, D) = E + X·N(μ_rec)^(−x) + Y·D^(−y) + Z·exp(−z·T/μ_rec^gamma) (paper Eqs. 4/8)."""

    E: float
    X: float
    x: float
    Y: float
    y: float
    Z: float
    z: float
    gamma: float
    gamma_learned: bool
    huber: float
    delta: float
    mean_abs_rel_error: float
    r2: float
    n_points: int
    n_starts: int
    converged: bool

    def predict(self, mean_recurrence, n_eff, tokens, steps) -> np.ndarray:
        mu, n, d, t = (np.asarray(v, dtype=np.float64) for v in (mean_recurrence, n_eff, tokens, steps))
        return (
            self.E
            + self.X * n ** (-self.x)
            + self.Y * d ** (-self.y)
            + self.Z * np.exp(-self.z * t / mu**self.gamma)
        )

    def to_dict(self) -> dict:
        return {
            "law": "L = E + X * N_eff^(-x) + Y * D^(-y) + Z * exp(-z * T / mu^gamma)",
            **_plain_fields(self),
        }

    def to_markdown(self) -> str:
        g = f"{self.gamma:.4f} (learned)" if self.gamma_learned else f"{self.gamma:g} (fixed)"
        return (
            "**L(T | μ, D) = E + X·N(μ)^(−x) + Y·D^(−y) + Z·exp(−z·T/μ^γ)**\n\n"
            "| E | X | x | Y | y | Z | z | γ | Huber | mean abs rel err | R² | points |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {self.E:.4f} | {self.X:.6g} | {self.x:.4f} | {self.Y:.6g} | {self.y:.4f} | {self.Z:.4f} | "
            f"{self.z:.4f} | {g} | {self.huber:.3g} | {100 * self.mean_abs_rel_error:.3f}% | {_fmt(self.r2)} | "
            f"{self.n_points} |\n"
        )


def fit_unified(
    mean_recurrence: Sequence[float] | np.ndarray,
    n_eff: Sequence[float] | np.ndarray,
    tokens: Sequence[float] | np.ndarray,
    steps: Sequence[float] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    *,
    learn_gamma: bool = False,
    delta: float = HUBER_DELTA,
    n_starts: int = 32,
    n_candidates: int = 4096,
    seed: int = 0,
    max_evals: int = 10_000,
) -> UnifiedFit:
    """Fit the paper's unified law (Eqs. 4/8) jointly over models and test-time depths:

        L̂(T | μ_rec, D) = E + X·N(μ_rec)^(−x) + Y·D^(−y) + Z·exp(−z·T / μ_rec^γ)

    with N(μ_rec) the unrolled parameter count (`effective_params`), D training tokens, T test-time
    recurrence. The paper fixes γ = 1 (a learned γ came out at 1.19/1.17 and did not help on held-out
    data); `learn_gamma=True` fits it too. The paper says the law has "8 parameters", yet with γ = 1
    it has 7 (E, X, x, Y, y, Z, z); 8 matches the learned-γ variant. Nothing else in the paper pins
    the form down further, so this is the form as printed. Fitted like `fit_parametric`: Huber on
    log-loss, best of the `n_starts` best-screened random initialisations (paper: L-BFGS, 1000
    restarts). Exponents in [0, 4], z in [0, 50], γ in [0, 4].
    """
    _check_lse_settings(delta, n_starts, n_candidates, max_evals)
    mu = _positive("mean_recurrence", mean_recurrence)
    n_a = _positive("n_eff", n_eff, mu.size)
    d_a = _positive("tokens", tokens, mu.size)
    t_a = _positive("num_steps", steps, mu.size)
    l_a = _positive("loss", loss, mu.size)
    n_params = 8 if learn_gamma else 7
    if mu.size < n_params + 1:
        raise ConfigError(f"the unified law has {n_params} parameters; need at least {n_params + 1} points")
    ln_n0, ln_d0 = float(np.log(n_a).mean()), float(np.log(d_a).mean())
    fn, fd, ln_mu = np.log(n_a) - ln_n0, np.log(d_a) - ln_d0, np.log(mu)

    def terms(theta: np.ndarray, jac: bool):
        # θ = (e, a', x, b', y, c, z[, γ]): t = [e, a' − x·fn, b' − y·fd, c − z·T·μ^−γ]
        th = theta[..., None, :]
        gamma = th[..., 7] if learn_gamma else 1.0
        s = t_a * np.exp(-gamma * ln_mu)  # T / μ^γ
        t = np.stack(
            [
                np.broadcast_to(th[..., 0], th.shape[:-2] + fn.shape),
                th[..., 1] - th[..., 2] * fn,
                th[..., 3] - th[..., 4] * fd,
                th[..., 5] - th[..., 6] * s,
            ],
            axis=-1,
        )
        if not jac:
            return t, None
        j = np.zeros((fn.size, 4, theta.shape[-1]))
        j[:, 0, 0] = 1
        j[:, 1, 1], j[:, 1, 2] = 1, -fn
        j[:, 2, 3], j[:, 2, 4] = 1, -fd
        j[:, 3, 5], j[:, 3, 6] = 1, -s
        if learn_gamma:
            j[:, 3, 7] = theta[6] * s * ln_mu  # d/dγ of −z·T·μ^−γ
        return t, j

    low = [np.log(l_a.min()) - 1.5, -6.0, 0.05, -6.0, 0.05, -6.0, 0.05]
    high = [np.log(l_a.min()), 1.5, 2.0, 1.5, 2.0, 1.5, 5.0]
    lower = [-20.0, -30.0, 0.0, -30.0, 0.0, -30.0, 0.0]
    upper = [10.0, 10.0, 4.0, 10.0, 4.0, 10.0, 50.0]
    if learn_gamma:
        low, high, lower, upper = low + [0.5], high + [2.0], lower + [0.0], upper + [4.0]
    bounds = (np.array(lower), np.array(upper))
    res = _fit_lse_huber(
        terms,
        np.log(l_a),
        np.array(low),
        np.array(high),
        bounds,
        delta=delta,
        n_starts=n_starts,
        n_candidates=n_candidates,
        seed=seed,
        max_evals=max_evals,
    )
    th = [float(v) for v in res.theta]
    fit = UnifiedFit(
        E=math.exp(th[0]),
        X=math.exp(th[1] + th[2] * ln_n0),
        x=th[2],
        Y=math.exp(th[3] + th[4] * ln_d0),
        y=th[4],
        Z=math.exp(th[5]),
        z=th[6],
        gamma=th[7] if learn_gamma else 1.0,
        gamma_learned=learn_gamma,
        huber=res.huber,
        delta=delta,
        mean_abs_rel_error=0.0,
        r2=0.0,
        n_points=int(mu.size),
        n_starts=res.n_starts,
        converged=res.converged,
    )
    pred = fit.predict(mu, n_a, d_a, t_a)
    fit.mean_abs_rel_error = float(np.mean(np.abs(pred - l_a) / l_a))
    fit.r2 = _r2(l_a, pred)
    return fit


def json_safe(obj):
    """NaN/inf are not JSON; write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
