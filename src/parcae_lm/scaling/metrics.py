"""Goodness-of-fit numbers reported with the fits."""

from __future__ import annotations

import numpy as np


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination of `pred` against `y` (NaN when `y` is constant)."""
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")


def mean_abs_rel_error(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean |pred − y| / y."""
    return float(np.mean(np.abs(pred - y) / y))
