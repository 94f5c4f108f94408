"""Monte Carlo of the scaling-law fits on synthetic data with a known truth: bias and interval coverage.

    python tools/fit_coverage.py --out docs/results/scaling [--seeds 200] [--law_seeds 40]

For each design, many datasets are drawn with independent noise; each is fitted as `parcae fit` fits
it, and the share of 95% intervals that contain the true value is counted (a calibrated interval covers
~95%; one that is falsely certain covers far less). Writes coverage.json and coverage.md to --out.
Needs the 'scaling' extra. Over 25 CPU-minutes at the defaults (the law bootstrap dominates): lower
--seeds and --law_seeds to trade precision for time.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from parcae_lm.files import atomic_write_text
from parcae_lm.scaling.isoflop import Bootstrap, fit_isoflop
from parcae_lm.scaling.laws import fit_parametric
from parcae_lm.scaling.solver import HuberSettings
from parcae_lm.scaling.testtime import fit_test_time

LEVEL = 0.95
BUDGETS = np.array([1, 2, 4, 8, 16, 64]) * 1e18
A_MU = 0.40  # μ* ∝ C^0.40, the paper's exponent


def mu_star(c: float) -> float:
    return 2.2 * (c / 1e18) ** A_MU


ISOFLOP_DESIGNS: dict[str, Callable[[float], list[float]]] = {
    "fixed grid μ ∈ {2,...,12} (optima drift to its edges)": lambda _s: [2, 4, 6, 8, 10, 12],
    "4 runs around each optimum": lambda s: [s / 2.5, s / 1.4, s * 1.4, s * 2.5],
    "6 runs around each optimum": lambda s: [s * k for k in (0.35, 0.55, 0.8, 1.25, 1.8, 2.8)],
    "3 runs per budget": lambda s: [s / 2, s, s * 2.2],
}


def isoflop_data(mus: Callable[[float], list[float]], sigma: float, seed: int):
    rng = np.random.default_rng(seed)
    rows = [
        (
            c,
            m,
            3.5 * (c / 1e18) ** -0.05
            + 0.08 * (math.log(m) - math.log(mu_star(c))) ** 2
            + rng.normal(0, sigma),
        )
        for c in BUDGETS
        for m in mus(mu_star(c))
    ]
    return (np.array(col) for col in zip(*rows))


def covers(ci: tuple[float, float] | None, truth: float) -> bool:
    return ci is not None and ci[0] <= truth <= ci[1]


def isoflop_study(seeds: int) -> list[dict]:
    out = []
    for name, mus in ISOFLOP_DESIGNS.items():
        for sigma in (0.002, 0.01):
            for method in Bootstrap:
                est, hull, boot, tci, widths, none = [], 0, 0, 0, [], 0
                for seed in range(seeds):
                    p = fit_isoflop(
                        *isoflop_data(mus, sigma, seed), n_boot=200, seed=seed, bootstrap=method
                    ).power_law
                    est.append(p.exponent)
                    none += p.exponent_ci is None
                    hull += covers(p.exponent_ci, A_MU)
                    boot += covers(p.exponent_ci_bootstrap, A_MU)
                    tci += covers(p.exponent_ci_t, A_MU)
                    if p.exponent_ci is not None:
                        widths.append(p.exponent_ci[1] - p.exponent_ci[0])
                out.append(
                    {
                        "design": name,
                        "noise_sd": sigma,
                        "bootstrap": method.value,
                        "datasets": seeds,
                        "median_exponent": float(np.median(est)),
                        "sd_exponent": float(np.std(est)),
                        "no_interval": none / seeds,
                        "coverage": hull / seeds,
                        "coverage_bootstrap_only": boot / seeds,
                        "coverage_t_only": tci / seeds,
                        "median_width": float(np.median(widths)) if widths else None,
                    }
                )
    return out


TESTTIME_DESIGNS = {
    "T ∈ {1,2,4,6,8,12,16,24}": np.array([1, 2, 4, 6, 8, 12, 16, 24], dtype=float),
    "T ∈ {1,2,3,4,6,8}": np.array([1, 2, 3, 4, 6, 8], dtype=float),
    "T = 1..24": np.arange(1, 25, dtype=float),
}


def testtime_study(seeds: int) -> list[dict]:
    out = []
    for name, t in TESTTIME_DESIGNS.items():
        for truth in ((3.0, 0.8, 0.5), (3.0, 0.9, 0.15)):
            for sigma in (1e-3, 1e-2):
                t_cov, z_cov, undetermined = np.zeros(3), np.zeros(3), 0
                for seed in range(seeds):
                    y = (
                        truth[0]
                        + truth[1] * np.exp(-truth[2] * t)
                        + np.random.default_rng(seed).normal(0, sigma, t.size)
                    )
                    f = fit_test_time(t, y)
                    undetermined += bool(f.note)
                    for j, (est, se, ci) in enumerate(
                        [(f.L_inf, f.L_inf_se, f.L_inf_ci), (f.Z, f.Z_se, f.Z_ci), (f.z, f.z_se, f.z_ci)]
                    ):
                        t_cov[j] += covers(ci, truth[j])
                        z_cov[j] += abs(est - truth[j]) <= 1.96 * se
                out.append(
                    {
                        "design": name,
                        "truth": dict(zip(("L_inf", "Z", "z"), truth)),
                        "noise_sd": sigma,
                        "datasets": seeds,
                        "coverage_t": dict(zip(("L_inf", "Z", "z"), (t_cov / seeds).tolist())),
                        "coverage_1.96": dict(zip(("L_inf", "Z", "z"), (z_cov / seeds).tolist())),
                        "not_determined": undetermined / seeds,
                    }
                )
    return out


E, A, ALPHA, B, BETA = 2.662, 522733.307, 0.771, 25420.102, 0.525  # the paper's 140M law (Table 11)


def law_study(seeds: int) -> list[dict]:
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(3e7, 3e9, 6), np.geomspace(1e9, 1e11, 6)))
    settings = HuberSettings(n_starts=4, n_candidates=1024)
    out = []
    for name, clean, truth in [
        (
            "6 sizes x 6 token counts, paper's law",
            E + A * n**-ALPHA + B * d**-BETA,
            {"E": E, "alpha": ALPHA, "beta": BETA},
        ),
        (
            "loss depends on D alone (N_eff's exponent undetermined)",
            2.0 + 400.0 * d**-0.3,
            {"E": 2.0, "beta": 0.3},
        ),
    ]:
        hits = dict.fromkeys(truth, 0)
        widths: dict[str, list[float]] = {k: [] for k in ("E", "alpha", "beta")}
        flagged = 0
        for seed in range(seeds):
            loss = clean * np.exp(np.random.default_rng(1000 + seed).normal(0, 1e-3, n.size))
            fit = fit_parametric(n, d, loss, settings, n_boot=100, seed=seed)
            for k, v in truth.items():
                hits[k] += covers(fit.intervals[k], v)
            for k in widths:
                lo, hi = fit.intervals[k]
                widths[k].append(hi - lo)
            flagged += bool(fit.at_bound) or any(v >= 0.05 for v in fit.boot_at_bound.values())
        out.append(
            {
                "design": name,
                "datasets": seeds,
                "bootstrap_replicates": 100,
                "coverage": {k: v / seeds for k, v in hits.items()},
                "median_width": {k: float(np.median(v)) for k, v in widths.items()},
                "flagged_at_a_bound": flagged / seeds,
            }
        )
    return out


def markdown(result: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    lines = [
        "# Scaling fits on synthetic data with a known truth",
        "",
        "## Iso-FLOP exponent (truth 0.40)",
        "",
    ]
    lines += [
        "| design | noise sd | bootstrap | median a | sd a | no interval | coverage | bootstrap alone | t alone | median width |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["isoflop"]:
        width = "-" if r["median_width"] is None else f"{r['median_width']:.3f}"
        lines.append(
            f"| {r['design']} | {r['noise_sd']} | {r['bootstrap']} | {r['median_exponent']:.3f} | "
            f"{r['sd_exponent']:.3f} | {pct(r['no_interval'])} | {pct(r['coverage'])} | "
            f"{pct(r['coverage_bootstrap_only'])} | {pct(r['coverage_t_only'])} | {width} |"
        )
    lines += ["", "## Test-time law L(T) = L∞ + Z·exp(−z·T): coverage of L∞ / Z / z", ""]
    lines += [
        "| depths | truth z | noise sd | t(n−3) intervals | ±1.96·SE | not determined |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["testtime"]:
        t = " / ".join(pct(v) for v in r["coverage_t"].values())
        z = " / ".join(pct(v) for v in r["coverage_1.96"].values())
        lines.append(
            f"| {r['design']} | {r['truth']['z']} | {r['noise_sd']} | {t} | {z} | {pct(r['not_determined'])} |"
        )
    lines += ["", "## Parametric law L = E + A·N^(−α) + B·D^(−β) (0.1% noise)", ""]
    lines += ["| design | coverage | median width (E / α / β) | flagged at a bound |", "|---|---|---|---|"]
    for r in result["laws"]:
        cov = ", ".join(f"{k} {pct(v)}" for k, v in r["coverage"].items())
        w = " / ".join(f"{v:.3g}" for v in r["median_width"].values())
        lines.append(f"| {r['design']} | {cov} | {w} | {pct(r['flagged_at_a_bound'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for coverage.json and coverage.md")
    parser.add_argument(
        "--seeds", type=int, default=200, help="datasets per iso-FLOP design (test-time: 1.5x)"
    )
    parser.add_argument("--law_seeds", type=int, default=40, help="datasets per parametric-law design")
    args = parser.parse_args()
    result = {
        "level": LEVEL,
        "isoflop": isoflop_study(args.seeds),
        "testtime": testtime_study(args.seeds * 3 // 2),
        "laws": law_study(args.law_seeds),
    }
    atomic_write_text(args.out / "coverage.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "coverage.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
