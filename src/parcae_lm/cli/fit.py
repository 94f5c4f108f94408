"""`parcae fit isoflop|parametric|testtime|unified RESULTS --out DIR`: scaling-law fits of a results table
(CSV or JSONL, one run per row; needs the 'scaling' extra).

Each writes <kind>.json, <kind>.md and PNG plots into DIR and prints the markdown table. Column names
default to those documented in `parcae_lm.scaling.table` and can be changed with the --*_col options.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from jsonargparse.typing import NonNegativeInt, PositiveInt

from parcae_lm.cli.command import UsageError
from parcae_lm.files import atomic_write_text
from parcae_lm.scaling import plots, report
from parcae_lm.scaling.isoflop import Bootstrap, fit_isoflop
from parcae_lm.scaling.laws import effective_params, fit_parametric, fit_unified
from parcae_lm.scaling.solver import HUBER_DELTA, HuberSettings
from parcae_lm.scaling.table import (
    FLOPS,
    LOSS,
    MEAN_RECURRENCE,
    N_EFF,
    NUM_STEPS,
    TOKENS,
    RunTable,
    json_safe,
)
from parcae_lm.scaling.testtime import fit_test_time_groups


def isoflop(
    results: Path,
    /,
    *,
    out: Path,
    loss_col: str = LOSS,
    flops_col: str = FLOPS,
    x_cols: tuple[str, ...] = (MEAN_RECURRENCE, TOKENS),
    n_boot: PositiveInt = 1000,
    ci: float = 0.95,
    seed: int = 0,
    bootstrap: Bootstrap = Bootstrap.RUNS,
    max_extrapolation: float = 1.5,
) -> None:
    """Iso-FLOP analysis: per-budget parabolas and power laws of the optima, with their intervals.

    The interval of each exponent spans a bootstrap interval and a t interval from the optima's scatter;
    none is given when a budget has runs at fewer than 4 distinct values (warnings say why).

    Args:
        results: Results table (.csv or .jsonl, one run per row).
        out: Output directory for JSON, markdown and PNGs.
        loss_col: Loss column.
        flops_col: Nominal FLOP-budget column.
        x_cols: Columns whose optimum to fit per budget.
        n_boot: Bootstrap replicates.
        ci: Confidence level of the intervals.
        seed: Bootstrap seed.
        bootstrap: runs: resample runs within each budget; residuals: resample the parabola residuals.
        max_extrapolation: Drop a budget whose vertex lies more than this factor outside its sampled range.
    """
    table = RunTable.read(results)
    flops, loss = table.numeric(flops_col), table.numeric(loss_col)
    fits, files, md = {}, [], []
    for col in x_cols:
        fit = fit_isoflop(
            flops,
            table.numeric(col),
            loss,
            variable=col,
            n_boot=n_boot,
            ci=ci,
            seed=seed,
            max_extrapolation=max_extrapolation,
            bootstrap=bootstrap,
        )
        fits[col] = fit.to_dict()
        md.append(report.markdown_isoflop(fit))
        files.append(plots.plot_isoflop(fit, out / f"isoflop_{col}.png", loss_label=loss_col))
        files.append(plots.plot_power_law(fit, out / f"powerlaw_{col}.png"))
    columns = {"flops": flops_col, "x": list(x_cols), "loss": loss_col}
    _finish(out, "isoflop", table, columns, fits, "\n".join(md), files)


def parametric(
    results: Path,
    /,
    *,
    out: Path,
    loss_col: str = LOSS,
    tokens_col: str = TOKENS,
    mu_col: str = MEAN_RECURRENCE,
    n_col: str = N_EFF,
    core_params: float | None = None,
    other_params: float | None = None,
    delta: float = HUBER_DELTA,
    n_starts: PositiveInt = 32,
    n_candidates: PositiveInt = 4096,
    n_boot: NonNegativeInt = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> None:
    """Parametric law L = E + A·N_eff^(−α) + B·D^(−β), fitted with a Huber loss on log-loss.

    Args:
        results: Results table (.csv or .jsonl, one run per row).
        out: Output directory for JSON, markdown and PNGs.
        loss_col: Loss column.
        tokens_col: Training-tokens column.
        mu_col: Mean-recurrence (μ_rec) column.
        n_col: Effective-parameter column.
        core_params: Compute N_eff = other + μ_rec·core from the μ_rec column instead of reading --n_col.
        other_params: Non-recurrent parameters, with --core_params.
        delta: Huber delta on log-loss residuals.
        n_starts: Solver runs, from the best-scoring random initialisations.
        n_candidates: Random initialisations screened for the restarts.
        n_boot: Bootstrap replicates for every parameter's interval (0: none; each is one more fit).
        ci: Confidence level of the intervals.
        seed: Seed of the initialisations and the bootstrap.
    """
    table = RunTable.read(results)
    n_eff, n_source = _n_eff(table, n_col, mu_col, core_params, other_params)
    tokens, loss = table.numeric(tokens_col), table.numeric(loss_col)
    fit = fit_parametric(
        n_eff,
        tokens,
        loss,
        HuberSettings(delta=delta, n_starts=n_starts, n_candidates=n_candidates, seed=seed),
        n_boot=n_boot,
        ci=ci,
        seed=seed,
    )
    title = f"L = E + A·N^(−{fit['alpha']:.3f}) + B·D^(−{fit['beta']:.3f})"
    predicted = fit.predict({N_EFF: n_eff, TOKENS: tokens})
    files = [plots.plot_parity(loss, predicted, out / "parametric_parity.png", title=title)]
    columns = {"n_eff": n_source, "tokens": tokens_col, "loss": loss_col}
    _finish(out, "parametric", table, columns, fit.to_dict(), report.markdown_law(fit), files)


def testtime(
    results: Path,
    /,
    *,
    out: Path,
    loss_col: str = LOSS,
    steps_col: str = NUM_STEPS,
    group_col: str | None = None,
) -> None:
    """Test-time law L(T) = L∞ + Z·exp(−z·T), one fit per model.

    Args:
        results: Results table (.csv or .jsonl, one run per row).
        out: Output directory for JSON, markdown and PNGs.
        loss_col: Loss column.
        steps_col: Test-time recurrence column.
        group_col: One curve per value of this column (default: mean_recurrence if present, else one curve).
    """
    table = RunTable.read(results)
    if group_col is None and table.has(MEAN_RECURRENCE):
        group_col = MEAN_RECURRENCE
    groups = table.raw(group_col) if group_col else None
    fits = fit_test_time_groups(
        table.numeric(steps_col), table.numeric(loss_col), groups, group_column=group_col
    )
    files = [plots.plot_test_time(fits, out / "testtime.png", loss_label=loss_col)]
    columns = {"steps": steps_col, "loss": loss_col, "group": group_col}
    _finish(out, "testtime", table, columns, fits.to_dict(), report.markdown_testtime(fits), files)


def unified(
    results: Path,
    /,
    *,
    out: Path,
    loss_col: str = LOSS,
    tokens_col: str = TOKENS,
    mu_col: str = MEAN_RECURRENCE,
    n_col: str = N_EFF,
    steps_col: str = NUM_STEPS,
    core_params: float | None = None,
    other_params: float | None = None,
    learn_gamma: bool = False,
    delta: float = HUBER_DELTA,
    n_starts: PositiveInt = 32,
    n_candidates: PositiveInt = 4096,
    n_boot: NonNegativeInt = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> None:
    """Unified law L = E + X·N^(−x) + Y·D^(−y) + Z·exp(−z·T/μ_rec^γ).

    Args:
        results: Results table (.csv or .jsonl, one run per row).
        out: Output directory for JSON, markdown and PNGs.
        loss_col: Loss column.
        tokens_col: Training-tokens column.
        mu_col: Mean-recurrence (μ_rec) column.
        n_col: Effective-parameter column.
        steps_col: Test-time recurrence column.
        core_params: Compute N_eff = other + μ_rec·core from the μ_rec column instead of reading --n_col.
        other_params: Non-recurrent parameters, with --core_params.
        learn_gamma: Fit γ too (the paper fixes γ = 1).
        delta: Huber delta on log-loss residuals.
        n_starts: Solver runs, from the best-scoring random initialisations.
        n_candidates: Random initialisations screened for the restarts.
        n_boot: Bootstrap replicates for every parameter's interval (0: none; each is one more fit).
        ci: Confidence level of the intervals.
        seed: Seed of the initialisations and the bootstrap.
    """
    table = RunTable.read(results)
    n_eff, n_source = _n_eff(table, n_col, mu_col, core_params, other_params)
    mu, tokens = table.numeric(mu_col), table.numeric(tokens_col)
    steps, loss = table.numeric(steps_col), table.numeric(loss_col)
    settings = HuberSettings(delta=delta, n_starts=n_starts, n_candidates=n_candidates, seed=seed)
    fit = fit_unified(
        mu,
        n_eff,
        tokens,
        steps,
        loss,
        learn_gamma=learn_gamma,
        settings=settings,
        n_boot=n_boot,
        ci=ci,
        seed=seed,
    )
    data = {MEAN_RECURRENCE: mu, N_EFF: n_eff, TOKENS: tokens, NUM_STEPS: steps}
    files = [
        plots.plot_parity(
            loss,
            fit.predict(data),
            out / "unified_parity.png",
            title="unified law: predicted vs observed",
            color_by=steps,
            color_label="test-time recurrence T",
        )
    ]
    columns = {"mean_recurrence": mu_col, "n_eff": n_source, "tokens": tokens_col, "steps": steps_col}
    columns["loss"] = loss_col
    _finish(out, "unified", table, columns, fit.to_dict(), report.markdown_law(fit), files)


def _n_eff(
    table: RunTable, n_col: str, mu_col: str, core_params: float | None, other_params: float | None
) -> tuple[np.ndarray, str]:
    if core_params is None:
        if other_params is not None:
            raise UsageError("--other_params needs --core_params")
        return table.numeric(n_col), n_col
    if other_params is None:
        raise UsageError("--core_params needs --other_params (the non-recurrent parameter count)")
    n = effective_params(core_params, other_params, table.numeric(mu_col))
    return n, f"{other_params:g} + {mu_col} * {core_params:g}"


def _finish(
    out: Path, kind: str, table: RunTable, columns: dict, result: dict, markdown: str, files: list
) -> None:
    payload = {"source": table.source, "rows": len(table.rows), "columns": columns, "result": result}
    json_path, md_path = out / f"{kind}.json", out / f"{kind}.md"
    atomic_write_text(json_path, json.dumps(json_safe(payload), indent=2) + "\n")
    atomic_write_text(md_path, f"# {kind} fit of {table.source}\n\n{markdown}")
    print(markdown)
    for path in [json_path, md_path, *files]:
        print(f"wrote {path}")
