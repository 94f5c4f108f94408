"""The per-model test-time law of §5.3: L(T) = L∞ + Z·exp(−z·T) over test-time recurrences T.

Fitted by plain nonlinear least squares on the loss (not the Huber-on-log-loss solver of the laws in
`laws.py`): Z is free in sign, so a loss that rises with T is fitted too, and the standard errors come
from the least-squares covariance. Needs scipy (the 'scaling' extra).
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
