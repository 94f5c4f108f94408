"""Laws declared from terms: the Jacobian assembled from the terms matches finite differences, the reported
parameters predict what the solver's parameterisation computes, and a new law needs no code of its own."""

from __future__ import annotations

import numpy as np
import pytest

from parcae_lm.errors import ConfigError
from parcae_lm.scaling.laws import (
    PARAMETRIC,
    BoundLaw,
    Constant,
    Decay,
    Law,
    PowerLaw,
    fit_law,
    unified_law,
)
from parcae_lm.scaling.report import markdown_law
from parcae_lm.scaling.solver import HuberSettings, logsumexp
from parcae_lm.scaling.table import MEAN_RECURRENCE, N_EFF, NUM_STEPS, TOKENS

LAWS = [PARAMETRIC, unified_law(), unified_law(learn_gamma=True)]


def columns_for(law: Law, n: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ranges = {N_EFF: (3e7, 3e9), TOKENS: (1e9, 1e11), MEAN_RECURRENCE: (1, 12), NUM_STEPS: (1, 24)}
    return {c: np.exp(rng.uniform(*np.log(ranges[c]), n)) for c in law.columns}


def random_theta(bound: BoundLaw, rng: np.random.Generator) -> np.ndarray:
    low, high = bound.starts()
    return rng.uniform(low, high)


@pytest.mark.parametrize("law", LAWS, ids=lambda law: f"{law.name}-{len(law.params)}")
def test_jacobian_matches_finite_differences(law):
    data = columns_for(law)
    bound = law.bind(data, np.log(np.full(40, 3.0)))
    rng = np.random.default_rng(1)
    for _ in range(3):
        theta = random_theta(bound, rng)
        t, jac = bound.terms(theta, True)
        assert t.shape == (40, len(law.terms)) and jac.shape == (40, len(law.terms), len(law.params))
        h = 1e-6
        for p in range(theta.size):
            step = np.zeros_like(theta)
            step[p] = h
            numeric = (bound.terms(theta + step, False)[0] - bound.terms(theta - step, False)[0]) / (2 * h)
            np.testing.assert_allclose(jac[:, :, p], numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("law", LAWS, ids=lambda law: f"{law.name}-{len(law.params)}")
def test_reported_parameters_predict_what_the_solver_computes(law):
    """The centred log-coefficients decode to coefficients that give the same L̂ in the law's plain form."""
    data = columns_for(law)
    bound = law.bind(data, np.log(np.full(40, 3.0)))
    rng = np.random.default_rng(2)
    for _ in range(3):
        theta = random_theta(bound, rng)
        t, _ = bound.terms(theta, False)
        np.testing.assert_allclose(law.predict(bound.report(theta), data), np.exp(logsumexp(t)), rtol=1e-12)
    # Batched θ (the solver scores many starts at once) gives the same terms as one θ at a time.
    thetas = np.stack([random_theta(bound, rng) for _ in range(5)])
    batched, _ = bound.terms(thetas, False)
    for i in range(5):
        np.testing.assert_array_equal(batched[i], bound.terms(thetas[i], False)[0])


def test_declarations():
    assert [p.name for p in PARAMETRIC.params] == ["E", "A", "alpha", "B", "beta"]
    assert PARAMETRIC.columns == (N_EFF, TOKENS)
    assert PARAMETRIC.formula == "L = E + A * N_eff^(-alpha) + B * D^(-beta)"
    fixed, learned = unified_law(), unified_law(learn_gamma=True)
    assert [p.name for p in fixed.params] == ["E", "X", "x", "Y", "y", "Z", "z"]
    assert [p.name for p in learned.params] == [*[p.name for p in fixed.params], "gamma"]
    assert fixed.formula.endswith("Z * exp(-z * T / mu)")
    assert learned.formula.endswith("Z * exp(-z * T / mu^gamma)")
    for law in LAWS:
        for p in law.params:  # every start lies inside the solver's box
            assert p.bounds[0] <= p.init[0] < p.init[1] <= p.bounds[1], p
        assert len({p.name for p in law.params}) == len(law.params)


def test_a_new_law_is_only_a_declaration():
    """L = E + B·D^(−β) + Z·exp(−z·T/μ): declared from the existing terms, fitted by the same solver."""
    law = Law(
        "data-and-depth",
        (Constant("E"), PowerLaw(TOKENS, "D", "B", "beta"), Decay(NUM_STEPS, MEAN_RECURRENCE, "Z", "z")),
    )
    d, mu, t = (a.ravel() for a in np.meshgrid([1e9, 4e9, 1.6e10, 6.4e10], [2, 4, 8], [1, 2, 4, 8, 16]))
    data = {TOKENS: d, MEAN_RECURRENCE: mu, NUM_STEPS: t}
    loss = 2.5 + 3e3 * d**-0.4 + 0.7 * np.exp(-1.2 * t / mu)
    fit = fit_law(law, data, loss, HuberSettings(n_starts=4), n_boot=0)
    assert (fit["E"], fit["beta"], fit["Z"], fit["z"]) == pytest.approx((2.5, 0.4, 0.7, 1.2), rel=1e-4)
    assert fit["B"] == pytest.approx(3e3, rel=2e-3)
    assert fit.huber < 1e-12 and fit.n_points == loss.size
    np.testing.assert_allclose(fit.predict(data), loss, rtol=1e-6)
    md = markdown_law(fit)
    assert md.startswith(f"**{law.formula}**") and "gamma (fixed)" in md


def test_fit_law_bad_input():
    n, d = np.geomspace(3e7, 3e9, 8), np.geomspace(1e9, 1e11, 8)
    with pytest.raises(ConfigError, match="needs column"):
        fit_law(PARAMETRIC, {N_EFF: n}, np.full(8, 3.0))
    with pytest.raises(ConfigError, match="'tokens' has 7 values"):
        fit_law(PARAMETRIC, {N_EFF: n, TOKENS: d[:7]}, np.full(8, 3.0))
    with pytest.raises(ConfigError, match="'loss' must be positive"):
        fit_law(PARAMETRIC, {N_EFF: n, TOKENS: d}, np.zeros(8))
    with pytest.raises(ConfigError, match="n_starts <= n_candidates"):
        HuberSettings(n_starts=10, n_candidates=5)
