"""The one solver behind every Huber-on-log-loss law (`laws.py`): multi-start bounded least squares.

A law predicts ln L̂ = logsumexp(t) over its additive terms t_k = ln(term k); the objective is the
mean Huber loss of ln L̂ − ln L, as in Hoffmann et al. (2022) and the paper. Writing every term as
exp(t_k) keeps all terms positive and the objective smooth. The solver only sees a term function;
what the terms are is the law's business.

scipy is an optional extra (`pip install 'parcae-lm[scaling]'`), imported when a fit needs it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from parcae_lm.errors import ConfigError

# Hoffmann et al. (2022) use δ = 1e-3 for the Huber loss on log-loss residuals; so do we by default.
HUBER_DELTA = 1e-3

# A term function maps parameters θ [..., P] to terms t [..., n, K] and, when asked, dt/dθ [n, K, P]
# (the Jacobian only for a single θ [P]).
TermFn = Callable[[np.ndarray, bool], tuple[np.ndarray, np.ndarray | None]]


def require_scipy_optimize() -> ModuleType:
    """scipy.optimize, or a ConfigError with the install hint."""
    try:
        import scipy.optimize
    except ImportError as e:
        raise ConfigError(
            "this fit needs scipy, which is an optional extra: pip install 'parcae-lm[scaling]'"
        ) from e
    return scipy.optimize


def logsumexp(t: np.ndarray) -> np.ndarray:
    m = t.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(t - m).sum(axis=-1, keepdims=True)))[..., 0]


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclass(frozen=True)
class HuberSettings:
    """How hard `fit_huber` searches; the defaults are those of `parcae fit`."""

    delta: float = HUBER_DELTA  # Huber δ on log-loss residuals
    n_starts: int = 32  # solver runs, from the best-scoring random initialisations
    n_candidates: int = 4096  # random initialisations scored before choosing the starts
    seed: int = 0  # seeds the random initialisations
    max_evals: int = 10_000  # residual evaluations per solver run

    def __post_init__(self) -> None:
        if not self.delta > 0:
            raise ConfigError(f"Huber delta must be > 0, got {self.delta}")
        if self.n_starts < 1 or self.n_candidates < self.n_starts:
            raise ConfigError(f"need 1 <= n_starts <= n_candidates, got {self.n_starts}, {self.n_candidates}")
        if self.max_evals < 1:
            raise ConfigError(f"max_evals must be >= 1, got {self.max_evals}")


@dataclass(frozen=True)
class HuberResult:
    theta: np.ndarray
    huber: float  # mean Huber loss over points (unscaled)
    converged: bool
    n_starts: int


def fit_huber(
    terms: TermFn,
    log_loss: np.ndarray,
    init_low: np.ndarray,
    init_high: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    settings: HuberSettings,
    extra_starts: np.ndarray | None = None,
) -> HuberResult:
    """Minimise Σ Huber_δ(logsumexp(terms(θ)) − ln L) within `bounds`, from the best of many random starts.

    `n_candidates` seeded uniform draws in [init_low, init_high] are scored in one vectorised pass;
    a bounded trust-region solver (scipy `least_squares`, loss="huber", f_scale=δ, which is exactly
    the Huber objective) starts from the `n_starts` best (and from each row of `extra_starts`, e.g. a
    previous optimum), and the lowest final objective wins. The paper used L-BFGS on the same
    objective; any solver that reaches its minimum gives the same parameters.
    """
    opt = require_scipy_optimize()
    delta = settings.delta

    def residuals(theta: np.ndarray) -> np.ndarray:
        t, _ = terms(theta, False)
        return logsumexp(t) - log_loss

    def jacobian(theta: np.ndarray) -> np.ndarray:
        t, jac = terms(theta, True)
        w = np.exp(t - logsumexp(t)[:, None])  # d logsumexp / d t_k (softmax weights)
        return np.einsum("nk,nkp->np", w, jac)

    rng = np.random.default_rng(settings.seed)
    n_candidates = settings.n_candidates
    cand = rng.uniform(init_low, init_high, size=(n_candidates, init_low.size))
    scores = np.empty(n_candidates)
    for s in range(0, n_candidates, 256):  # chunks keep memory at ~256·n·K floats
        t, _ = terms(cand[s : s + 256], False)
        scores[s : s + 256] = huber(logsumexp(t) - log_loss, delta).mean(axis=-1)
    starts = cand[np.argsort(scores)[: settings.n_starts]]
    if extra_starts is not None:
        starts = np.concatenate([np.atleast_2d(extra_starts), starts])

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
                max_nfev=settings.max_evals,
            )
            obj = float(huber(res.fun, delta).mean())
            if math.isfinite(obj) and obj < best_obj:
                best, best_obj = res, obj
    if best is None:
        raise ConfigError("the Huber fit diverged from every initialisation (check the loss column)")
    return HuberResult(best.x, best_obj, bool(best.status > 0), len(starts))
