"""Scaling laws as sums of positive terms, each law declared once (paper §5.2-5.3, Eqs. 4/7/8).

A law is a tuple of terms; L̂ = Σ_k exp(t_k), fitted by the one Huber-on-log-loss solver
(`solver.fit_huber`). Each term kind declares its parameters (name, solver bounds, range of random
starts) and its log-value t(θ) with dt/dθ; a law's Jacobian is assembled from its terms, never written
per law. The kinds:

- `Constant`: the irreducible loss E, t = ln E.
- `PowerLaw`: A·x^(−α), t = a' − α·(ln x − ln x₀), with x₀ the data's geometric mean. Centring makes
  the log-coefficient a' the size of the term at the data's centre, which decorrelates it from α and
  bounds a sensible range of starts; A = exp(a' + α·ln x₀) is what is reported.
- `Decay`: the test-time term Z·exp(−z·T/μ^γ), t = ln Z − z·T·μ^(−γ), with γ fixed or fitted.

The two laws of the paper:

- `PARAMETRIC` (Eq. 7): L̂ = E + A·N_eff^(−α) + B·D^(−β), N_eff = `effective_params(...)`.
- `unified_law()` (Eqs. 4/8): L̂(T | μ_rec, D) = E + X·N(μ_rec)^(−x) + Y·D^(−y) + Z·exp(−z·T/μ_rec^γ),
  γ = 1 as in the paper (or learned).

The paper fits these with L-BFGS from many restarts; see `solver.fit_huber` for ours, and `fit_law` for
the bootstrap intervals every parameter gets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from parcae_lm.errors import ConfigError
from parcae_lm.scaling import metrics
from parcae_lm.scaling.intervals import percentile_interval
from parcae_lm.scaling.solver import HuberSettings, fit_huber
from parcae_lm.scaling.table import MEAN_RECURRENCE, N_EFF, NUM_STEPS, TOKENS, positive

ArrayLike = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Param:
    """One fitted parameter, as the solver sees it."""

    name: str  # reported name (a log-coefficient is reported as the coefficient it is the log of)
    bounds: tuple[float, float]  # the solver keeps it in this box
    init: tuple[float, float]  # random starts are drawn uniformly from this range


# Ranges shared by the term kinds: log-coefficients, exponents and the test-time decay rate.
_LOG_COEF = dict(bounds=(-30.0, 10.0), init=(-6.0, 1.5))
_EXPONENT = dict(bounds=(0.0, 4.0), init=(0.05, 2.0))


@dataclass(frozen=True)
class Constant:
    """E, the loss no budget removes: t = ln E. Starts are drawn in [ln min L − 1.5, ln min L]."""

    name: str

    @property
    def params(self) -> tuple[Param, ...]:
        return (Param(self.name, bounds=(-20.0, 10.0), init=(-1.5, 0.0)),)

    @property
    def columns(self) -> tuple[str, ...]:
        return ()

    def prepare(self, data: Mapping[str, np.ndarray], log_loss: np.ndarray) -> float:
        return float(log_loss.min())

    def starts(self, prep: float) -> list[tuple[float, float]]:
        lo, hi = self.params[0].init
        return [(prep + lo, prep + hi)]

    def log_value(self, th: np.ndarray, prep: float, n: int) -> np.ndarray:
        return np.broadcast_to(th[..., 0], th.shape[:-2] + (n,))

    def gradient(self, theta: np.ndarray, prep: float, n: int) -> np.ndarray:
        return np.ones((n, 1))

    def report(self, theta: np.ndarray, prep: float) -> dict[str, float]:
        return {self.name: math.exp(theta[0])}

    def predict(self, values: Mapping[str, float], data: Mapping[str, np.ndarray]) -> float:
        return values[self.name]

    def formula(self) -> str:
        return self.name


@dataclass(frozen=True)
class _Centred:
    """ln x − ln x₀ and ln x₀ (x₀ = the geometric mean of the column)."""

    feature: np.ndarray
    log_centre: float


@dataclass(frozen=True)
class PowerLaw:
    """coefficient · column^(−exponent), fitted in the centred form t = a' − α·(ln x − ln x₀)."""

    column: str
    symbol: str  # how the column is written in the law, e.g. N_eff
    coefficient: str
    exponent: str

    @property
    def params(self) -> tuple[Param, ...]:
        return (Param(self.coefficient, **_LOG_COEF), Param(self.exponent, **_EXPONENT))

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def prepare(self, data: Mapping[str, np.ndarray], log_loss: np.ndarray) -> _Centred:
        log_centre = float(np.log(data[self.column]).mean())
        return _Centred(np.log(data[self.column]) - log_centre, log_centre)

    def starts(self, prep: _Centred) -> list[tuple[float, float]]:
        return [p.init for p in self.params]

    def log_value(self, th: np.ndarray, prep: _Centred, n: int) -> np.ndarray:
        return th[..., 0] - th[..., 1] * prep.feature

    def gradient(self, theta: np.ndarray, prep: _Centred, n: int) -> np.ndarray:
        return np.stack([np.ones(n), -prep.feature], axis=-1)

    def report(self, theta: np.ndarray, prep: _Centred) -> dict[str, float]:
        a, alpha = float(theta[0]), float(theta[1])
        return {self.coefficient: math.exp(a + alpha * prep.log_centre), self.exponent: alpha}

    def predict(self, values: Mapping[str, float], data: Mapping[str, np.ndarray]) -> np.ndarray:
        return values[self.coefficient] * data[self.column] ** (-values[self.exponent])

    def formula(self) -> str:
        return f"{self.coefficient} * {self.symbol}^(-{self.exponent})"


@dataclass(frozen=True)
class _Depth:
    steps: np.ndarray  # T
    log_recurrence: np.ndarray  # ln μ


@dataclass(frozen=True)
class Decay:
    """The test-time term coefficient · exp(−rate · T / μ^γ): depth T beyond the training recurrence μ
    buys less and less. γ is fitted if `learn_gamma`, else 1; it is reported under the name `gamma`."""

    steps: str  # column of T
    recurrence: str  # column of μ
    coefficient: str
    rate: str
    gamma: str = "gamma"
    learn_gamma: bool = False

    @property
    def params(self) -> tuple[Param, ...]:
        out = (Param(self.coefficient, **_LOG_COEF), Param(self.rate, bounds=(0.0, 50.0), init=(0.05, 5.0)))
        if self.learn_gamma:
            out += (Param(self.gamma, bounds=(0.0, 4.0), init=(0.5, 2.0)),)
        return out

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.steps, self.recurrence)

    def prepare(self, data: Mapping[str, np.ndarray], log_loss: np.ndarray) -> _Depth:
        return _Depth(data[self.steps], np.log(data[self.recurrence]))

    def starts(self, prep: _Depth) -> list[tuple[float, float]]:
        return [p.init for p in self.params]

    def _scaled_depth(self, th: np.ndarray, prep: _Depth) -> np.ndarray:
        gamma = th[..., 2] if self.learn_gamma else 1.0
        return prep.steps * np.exp(-gamma * prep.log_recurrence)  # T / μ^γ

    def log_value(self, th: np.ndarray, prep: _Depth, n: int) -> np.ndarray:
        return th[..., 0] - th[..., 1] * self._scaled_depth(th, prep)

    def gradient(self, theta: np.ndarray, prep: _Depth, n: int) -> np.ndarray:
        s = self._scaled_depth(theta, prep)
        cols = [np.ones(n), -s]
        if self.learn_gamma:
            cols.append(theta[1] * s * prep.log_recurrence)  # d/dγ of −z·T·μ^−γ
        return np.stack(cols, axis=-1)

    def report(self, theta: np.ndarray, prep: _Depth) -> dict[str, float]:
        gamma = float(theta[2]) if self.learn_gamma else 1.0
        return {self.coefficient: math.exp(theta[0]), self.rate: float(theta[1]), self.gamma: gamma}

    def predict(self, values: Mapping[str, float], data: Mapping[str, np.ndarray]) -> np.ndarray:
        t, mu = data[self.steps], data[self.recurrence]
        return values[self.coefficient] * np.exp(-values[self.rate] * t / mu ** values[self.gamma])

    def formula(self) -> str:
        divisor = f"mu^{self.gamma}" if self.learn_gamma else "mu"
        return f"{self.coefficient} * exp(-{self.rate} * T / {divisor})"


Term = Constant | PowerLaw | Decay


@dataclass(frozen=True)
class Law:
    """L̂ = Σ exp(t_k) over `terms`; the parameters are the terms' in order."""

    name: str
    terms: tuple[Term, ...]

    @property
    def params(self) -> tuple[Param, ...]:
        return tuple(p for term in self.terms for p in term.params)

    @property
    def columns(self) -> tuple[str, ...]:
        """The input columns, in the order the terms read them (each once)."""
        return tuple(dict.fromkeys(c for term in self.terms for c in term.columns))

    @property
    def formula(self) -> str:
        return "L = " + " + ".join(term.formula() for term in self.terms)

    def predict(self, values: Mapping[str, float], data: Mapping[str, ArrayLike]) -> np.ndarray:
        """L̂ from reported parameter `values` at `data` (one array per column)."""
        arrays = {c: np.asarray(data[c], dtype=np.float64) for c in self.columns}
        total: float | np.ndarray = 0.0
        for term in self.terms:
            total = total + term.predict(values, arrays)
        return np.asarray(total)

    def bind(self, data: Mapping[str, np.ndarray], log_loss: np.ndarray) -> BoundLaw:
        """The law on checked arrays (one per column) and ln L: what the solver works on."""
        spans, start = [], 0
        for term in self.terms:
            spans.append(slice(start, start + len(term.params)))
            start += len(term.params)
        preps = tuple(term.prepare(data, log_loss) for term in self.terms)
        return BoundLaw(self, preps, tuple(spans), log_loss.size)


@dataclass(frozen=True)
class BoundLaw:
    """A law bound to its data: the term function, starts and box the solver needs, and the report of θ."""

    law: Law
    preps: tuple[Any, ...]  # each term's prepared arrays
    spans: tuple[slice, ...]  # each term's slice of θ
    n: int  # points

    def terms(self, theta: np.ndarray, jac: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """t [..., n, K] for θ [..., P]; with `jac`, also dt/dθ [n, K, P] for a single θ [P]."""
        parts = zip(self.law.terms, self.preps, self.spans)
        th = theta[..., None, :]
        t = np.stack([term.log_value(th[..., span], prep, self.n) for term, prep, span in parts], axis=-1)
        if not jac:
            return t, None
        # Each term depends only on its own parameters: the Jacobian is block-diagonal in the terms.
        j = np.zeros((self.n, len(self.law.terms), theta.shape[-1]))
        for k, (term, prep, span) in enumerate(zip(self.law.terms, self.preps, self.spans)):
            j[:, k, span] = term.gradient(theta[span], prep, self.n)
        return t, j

    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the random initialisations."""
        ranges = [r for term, prep in zip(self.law.terms, self.preps) for r in term.starts(prep)]
        low, high = zip(*ranges)
        return np.array(low), np.array(high)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        params = self.law.params
        return np.array([p.bounds[0] for p in params]), np.array([p.bounds[1] for p in params])

    def report(self, theta: np.ndarray) -> dict[str, float]:
        """The reported parameters (coefficients, exponents, fixed values) of solver parameters θ."""
        values: dict[str, float] = {}
        for term, prep, span in zip(self.law.terms, self.preps, self.spans):
            values.update(term.report(theta[span], prep))
        return values


PARAMETRIC = Law(
    "parametric",
    (
        Constant("E"),
        PowerLaw(N_EFF, "N_eff", "A", "alpha"),
        PowerLaw(TOKENS, "D", "B", "beta"),
    ),
)


def unified_law(learn_gamma: bool = False) -> Law:
    """The paper's unified law. The paper fixes γ = 1 (a learned γ came out at 1.19/1.17 and did not help
    on held-out data). It says the law has "8 parameters", yet with γ = 1 it has 7 (E, X, x, Y, y, Z, z);
    8 matches the learned-γ variant. Nothing else in the paper pins the form down further, so this is the
    form as printed."""
    return Law(
        "unified",
        (
            Constant("E"),
            PowerLaw(N_EFF, "N_eff", "X", "x"),
            PowerLaw(TOKENS, "D", "Y", "y"),
            Decay(NUM_STEPS, MEAN_RECURRENCE, "Z", "z", learn_gamma=learn_gamma),
        ),
    )


@dataclass
class LawFit:
    """A fitted law: its reported parameters, their bootstrap intervals and how well it fits."""

    law: Law
    values: dict[str, float]  # reported parameters by name, e.g. {"E": 2.66, "A": 5.2e5, "alpha": 0.77}
    huber: float  # mean Huber loss of log-residuals at the optimum
    delta: float
    mean_abs_rel_error: float  # mean |L̂ − L| / L
    r2: float
    n_points: int
    n_starts: int
    converged: bool
    intervals: dict[str, tuple[float, float]] | None = None  # bootstrap percentile interval per parameter
    ci_level: float = 0.95
    n_boot: int = 0
    n_valid: int = 0  # replicates whose fit converged to a finite objective
    at_bound: dict[str, str] = field(default_factory=dict)  # parameter -> "lower"/"upper": the solver's box
    boot_at_bound: dict[str, float] = field(default_factory=dict)  # share of replicates with it at a bound
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def predict(self, data: Mapping[str, ArrayLike]) -> np.ndarray:
        """L̂ at the given columns (keyed by column name, e.g. {"n_eff": ..., "tokens": ...})."""
        return self.law.predict(self.values, data)

    def to_dict(self) -> dict:
        return {
            "law": self.law.formula,
            **self.values,
            "fitted": [p.name for p in self.law.params],
            "intervals": None if self.intervals is None else {k: list(v) for k, v in self.intervals.items()},
            "ci_level": self.ci_level,
            "n_boot": self.n_boot,
            "n_valid": self.n_valid,
            "at_bound": self.at_bound,
            "boot_at_bound": self.boot_at_bound,
            "warnings": self.warnings,
            "huber": self.huber,
            "delta": self.delta,
            "mean_abs_rel_error": self.mean_abs_rel_error,
            "r2": self.r2,
            "n_points": self.n_points,
            "n_starts": self.n_starts,
            "converged": self.converged,
        }


def _at_bound(theta: np.ndarray, bounds: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """-1 / +1 where a parameter sits on its lower / upper bound (within 1e-6 of the box width), else 0."""
    lo, hi = bounds
    tol = 1e-6 * (hi - lo)
    return np.where(theta <= lo + tol, -1, np.where(theta >= hi - tol, 1, 0))


def fit_law(
    law: Law,
    data: Mapping[str, ArrayLike],
    loss: ArrayLike,
    settings: HuberSettings | None = None,
    *,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> LawFit:
    """Fit `law` to `loss` observed at `data` (one array per column of `law.columns`): Huber loss
    (δ = settings.delta) between ln L̂ and ln L, best of `settings.n_starts` solver runs started from the
    best-scoring of `settings.n_candidates` seeded random initialisations. Needs more points than the
    law has parameters.

    Every parameter gets a bootstrap interval (`n_boot` replicates, seeded by `seed`; 0 for none): the
    runs are resampled with replacement (redrawn while fewer distinct runs than parameters + 1), the law
    is refitted from the point estimate and from the best of a fresh set of random starts, and the central `ci`
    share of each reported parameter is its interval. A parameter on the solver's box (e.g. E at ~0 or
    an exponent at 0) is not determined by the data: the fit flags it, and reports how often replicates
    end on a bound, which cuts their interval there.
    """
    missing = [c for c in law.columns if c not in data]
    if missing:
        raise ConfigError(f"the {law.name} law needs column(s) {', '.join(missing)}")
    if not 0 < ci < 1:
        raise ConfigError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 0:
        raise ConfigError(f"n_boot must be >= 0, got {n_boot}")
    arrays: dict[str, np.ndarray] = {}
    n: int | None = None
    for c in law.columns:
        arrays[c] = positive(c, data[c], n)
        n = arrays[c].size
    l_a = positive("loss", loss, n)
    n = l_a.size
    p = len(law.params)
    if n < p + 1:
        raise ConfigError(f"the {law.name} law has {p} parameters; need at least {p + 1} points, got {n}")
    log_loss = np.log(l_a)
    bound = law.bind(arrays, log_loss)
    settings = settings or HuberSettings()
    box = bound.bounds()
    res = fit_huber(bound.terms, log_loss, *bound.starts(), box, settings)
    values = bound.report(res.theta)
    pred = law.predict(values, arrays)
    names = [q.name for q in law.params]
    warnings: list[str] = []
    at_bound = {}
    for name, side, q in zip(names, _at_bound(res.theta, box), law.params):
        if side:
            at_bound[name] = "lower" if side < 0 else "upper"
            edge = q.bounds[0] if side < 0 else q.bounds[1]
            warnings.append(
                f"{name} = {values[name]:.4g} sits on the solver's {at_bound[name]} bound ({edge:g} in the "
                "fitted parameterisation): the data do not determine it"
            )

    intervals, boot_at_bound, n_valid = None, {}, 0
    if n_boot:
        rng = np.random.default_rng(seed)
        replicate = HuberSettings(
            delta=settings.delta,
            n_starts=1,
            n_candidates=max(1, settings.n_candidates // 8),
            max_evals=settings.max_evals,
        )
        rows = np.arange(n)
        reported: list[list[float]] = []
        hits = np.zeros(p)
        for _replicate in range(n_boot):
            for _attempt in range(100):
                pick = rng.choice(rows, n)
                if np.unique(pick).size > p:
                    break
            sample = {c: v[pick] for c, v in arrays.items()}
            b_bound = law.bind(sample, log_loss[pick])
            try:
                b_res = fit_huber(
                    b_bound.terms,
                    log_loss[pick],
                    *b_bound.starts(),
                    box,
                    replace(replicate, seed=int(rng.integers(2**31))),
                    extra_starts=_transfer(res.theta, bound, b_bound),
                )
            except ConfigError:
                continue  # the fit diverged from every start: the replicate carries no estimate
            b_values = b_bound.report(b_res.theta)
            reported.append([b_values[name] for name in names])
            hits += _at_bound(b_res.theta, box) != 0
        n_valid = len(reported)
        if n_valid:
            arr = np.array(reported)
            intervals = {name: percentile_interval(arr[:, j], ci) for j, name in enumerate(names)}
            boot_at_bound = {name: float(hits[j] / n_valid) for j, name in enumerate(names)}
            for name, share in boot_at_bound.items():
                if share >= 0.05 and name not in at_bound:
                    warnings.append(
                        f"{name} ends on a solver bound in {100 * share:.0f}% of bootstrap replicates: "
                        "its interval is cut there and the data barely determine it"
                    )
    return LawFit(
        law=law,
        values=values,
        huber=res.huber,
        delta=settings.delta,
        mean_abs_rel_error=metrics.mean_abs_rel_error(l_a, pred),
        r2=metrics.r2(l_a, pred),
        n_points=n,
        n_starts=res.n_starts,
        converged=res.converged,
        intervals=intervals,
        ci_level=ci,
        n_boot=n_boot,
        n_valid=n_valid,
        at_bound=at_bound,
        boot_at_bound=boot_at_bound,
        warnings=warnings,
    )


def _transfer(theta: np.ndarray, source: BoundLaw, target: BoundLaw) -> np.ndarray:
    """θ of `source` re-expressed for `target`: a centred log-coefficient depends on the data's centre
    (a' = ln A − α·ln x₀), so a start taken from another sample is moved to the new centre."""
    out = theta.copy()
    for term, p_src, p_tgt, span in zip(source.law.terms, source.preps, target.preps, source.spans):
        if isinstance(term, PowerLaw):
            a, alpha = theta[span][0], theta[span][1]
            out[span.start] = a + alpha * (p_src.log_centre - p_tgt.log_centre)
    return np.clip(out, *source.bounds())


def fit_parametric(
    n_eff: ArrayLike,
    tokens: ArrayLike,
    loss: ArrayLike,
    settings: HuberSettings | None = None,
    *,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> LawFit:
    """Fit L = E + A·N_eff^(−α) + B·D^(−β) (paper Eq. 7, Chinchilla approach 3). Needs ≥ 6 runs.
    Bootstrap intervals as in `fit_law`."""
    return fit_law(
        PARAMETRIC, {N_EFF: n_eff, TOKENS: tokens}, loss, settings, n_boot=n_boot, ci=ci, seed=seed
    )


def fit_unified(
    mean_recurrence: ArrayLike,
    n_eff: ArrayLike,
    tokens: ArrayLike,
    steps: ArrayLike,
    loss: ArrayLike,
    *,
    learn_gamma: bool = False,
    settings: HuberSettings | None = None,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> LawFit:
    """Fit the unified law (`unified_law`) jointly over models and test-time depths: N(μ_rec) the unrolled
    parameter count (`effective_params`), D training tokens, T test-time recurrence. Bootstrap intervals
    as in `fit_law`."""
    data = {MEAN_RECURRENCE: mean_recurrence, N_EFF: n_eff, TOKENS: tokens, NUM_STEPS: steps}
    return fit_law(unified_law(learn_gamma), data, loss, settings, n_boot=n_boot, ci=ci, seed=seed)


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
