"""Interval arithmetic shared by the fits: Student's t quantiles and percentile intervals of replicates.

scipy is the optional 'scaling' extra (`pip install 'parcae-lm[scaling]'`), imported when a quantile is
needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from parcae_lm.errors import ConfigError


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom."""
    if dof < 1:
        raise ConfigError(f"a t quantile needs >= 1 degree of freedom, got {dof}")
    try:
        from scipy.stats import t as student_t
    except ImportError as e:
        raise ConfigError(
            "intervals need scipy, which is an optional extra: pip install 'parcae-lm[scaling]'"
        ) from e
    return float(student_t.ppf(p, dof))


def percentile_interval(values: Sequence[float] | np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` interval of bootstrap replicates (percentile method)."""
    q = 100 * (1 - level) / 2
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [q, 100 - q])
    return float(lo), float(hi)
