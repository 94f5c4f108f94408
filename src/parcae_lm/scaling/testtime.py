"""The per-model test-time law of §5.3: L(T) = L∞ + Z·exp(−z·T) over test-time recurrences T.

Fitted by plain nonlinear least squares on the loss (not the Huber-on-log-loss solver of the laws in
`laws.py`): Z is free in sign, so a loss that rises with T is fitted too. The standard errors come from
the least-squares covariance, and the intervals are estimate ± t(n − 3)·SE: with the 6–10 depths a
model is usually evaluated at, Student's t with n − 3 degrees of freedom (not the normal 1.96) is what
keeps a 95% interval at 95%. No interval is given where the data cannot determine a parameter: one
on its bound (L∞ = 0, z = 0 or z = 50), or Z and z when the decay is over before the smallest depth
(z·T_min > 7) or has barely begun by the largest (z·(T_max − T_min) < 1e-3), where only a bound on z is
measured and the covariance's standard errors mean nothing. Needs scipy (the 'scaling' extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from parcae_lm.errors import ConfigError
from parcae_lm.scaling import metrics
from parcae_lm.scaling.intervals import t_quantile
from parcae_lm.scaling.solver import require_scipy_optimize
from parcae_lm.scaling.table import positive


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
    L_inf_ci: tuple[float, float] | None  # None: the parameter is not determined (see `note`)
    Z_ci: tuple[float, float] | None
    z_ci: tuple[float, float] | None
    ci_level: float
    at_bound: dict[str, str]  # parameter -> "lower"/"upper"
    note: str  # why an interval is missing ("" when all three have one)
    r2: float
    rmse: float
    n_points: int
    steps: list[float]
    loss: list[float]

    def predict(self, steps: float | np.ndarray) -> np.ndarray:
        return self.L_inf + self.Z * np.exp(-self.z * np.asarray(steps, dtype=np.float64))

    def to_dict(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"law": "L(T) = L_inf + Z * exp(-z * T)", **fields}


@dataclass
class TestTimeFits:
    """Test-time law fits for several models (one per group, e.g. per training μ_rec)."""

    __test__ = False  # not a pytest test class

    group_column: str | None
    fits: list[TestTimeFit]

    def to_dict(self) -> dict:
        return {"group_column": self.group_column, "fits": [f.to_dict() for f in self.fits]}


BOUNDS = ((0.0, -np.inf, 0.0), (np.inf, np.inf, 50.0))  # (L∞, Z, z)
DECAY_DONE = 7.0  # z·T_min beyond this: exp(−z·T) < 0.1% at every depth measured
DECAY_UNSTARTED = 1e-3  # z·(T_max − T_min) below this: exp(−z·T) is a straight line over the depths


def fit_test_time(
    steps: Sequence[float] | np.ndarray,
    loss: Sequence[float] | np.ndarray,
    *,
    label: str = "",
    ci: float = 0.95,
) -> TestTimeFit:
    """Fit L(T) = L∞ + Z·exp(−z·T) by least squares (scipy `curve_fit`, trust-region reflective).

    The model is linear in (L∞, Z) for fixed z, so the start is the best z on a log grid in
    [1e-3, 20] with (L∞, Z) solved exactly; `curve_fit` then refines all three within bounds
    L∞ ≥ 0 and 0 ≤ z ≤ 50 (Z is free, so a loss that rises with T is fitted too, with Z < 0).
    Standard errors are the square roots of the covariance diagonal (scaled by the residual
    variance); they are NaN when a parameter is not identified. Intervals: estimate ± t(n − 3)·SE at
    level `ci`. Needs ≥ 4 distinct T.
    """
    opt = require_scipy_optimize()
    t_a = positive("num_steps", steps)
    l_a = positive("loss", loss, t_a.size)
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
        popt, pcov = opt.curve_fit(model, t_a, l_a, p0=p0, bounds=BOUNDS, maxfev=20_000)
    se = np.sqrt(np.where(np.diag(pcov) >= 0, np.diag(pcov), np.nan))
    half = t_quantile(0.5 + ci / 2, t_a.size - 3) * se
    names = ("L_inf", "Z", "z")
    at_bound = {}
    for name, value, lo, hi in zip(names, popt, *BOUNDS):
        if value <= lo + 1e-9 * max(1.0, abs(lo)):
            at_bound[name] = "lower"
        elif value >= hi - 1e-9 * max(1.0, abs(hi)):
            at_bound[name] = "upper"
    undetermined = set(at_bound)
    notes = [f"{k} is on its {v} bound" for k, v in at_bound.items()]
    z_fit = float(popt[2])
    if z_fit * t_a.min() > DECAY_DONE or z_fit * (t_a.max() - t_a.min()) < DECAY_UNSTARTED:
        undetermined |= {"Z", "z"}
        notes.append(
            f"the decay exp(-z*T) with z = {z_fit:.3g} is "
            + ("over before the smallest depth" if z_fit * t_a.min() > DECAY_DONE else "flat over the depths")
            + ", so Z and z are not determined separately"
        )
    intervals = {
        name: None if name in undetermined else (float(v - h), float(v + h))
        for name, v, h in zip(names, popt, half)
    }
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
        L_inf_ci=intervals["L_inf"],
        Z_ci=intervals["Z"],
        z_ci=intervals["z"],
        ci_level=ci,
        at_bound=at_bound,
        note="; ".join(notes),
        r2=metrics.r2(l_a, pred),
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
