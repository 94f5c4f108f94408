"""`parcae fit ...`: scaling-law fits of a results table (CSV or JSONL, one run per row).

    parcae fit isoflop    RESULTS --out DIR   iso-FLOP parabolas, μ_rec*(C) and D*(C) power laws + bootstrap CIs
    parcae fit parametric RESULTS --out DIR   L = E + A·N_eff^(−α) + B·D^(−β)
    parcae fit testtime   RESULTS --out DIR   L(T) = L∞ + Z·exp(−z·T), one curve per model
    parcae fit unified    RESULTS --out DIR   L = E + X·N^(−x) + Y·D^(−y) + Z·exp(−z·T/μ_rec)

Each writes <kind>.json, <kind>.md and PNG plots into DIR and prints the markdown table. Column
names default to those documented in `parcae_lm.scaling.table` and can be changed with flags.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from parcae_lm.errors import ConfigError
from parcae_lm.files import atomic_write_text
from parcae_lm.scaling import plots, report
from parcae_lm.scaling.emit import Emit, emit_commands
from parcae_lm.scaling.isoflop import Bootstrap, fit_isoflop
from parcae_lm.scaling.laws import effective_params, fit_parametric, fit_unified
from parcae_lm.scaling.runner import run_sweep
from parcae_lm.scaling.solver import HUBER_DELTA, HuberSettings
from parcae_lm.scaling.sweep import SweepSpec, expand
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


def register(subparsers) -> None:
    _register_fit(subparsers)
    _register_sweep(subparsers)


# ---------------------------------------------------------------------------------------------------
# parcae fit


def _register_fit(subparsers) -> None:
    p = subparsers.add_parser("fit", help="fit scaling laws to a results table (needs the 'scaling' extra)")
    sub = p.add_subparsers(dest="fit_kind", metavar="KIND", required=True)

    def common(name: str, help: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help, description=help)
        q.add_argument("results", type=Path, help="results table (.csv or .jsonl, one run per row)")
        q.add_argument("--out", type=Path, required=True, help="output directory for JSON, markdown and PNGs")
        q.add_argument("--loss-col", default=LOSS, help=f"loss column (default: {LOSS})")
        return q

    def law_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--tokens-col", default=TOKENS, help=f"training-tokens column (default: {TOKENS})")
        q.add_argument("--mu-col", default=MEAN_RECURRENCE, help=f"μ_rec column (default: {MEAN_RECURRENCE})")
        q.add_argument("--n-col", default=N_EFF, help=f"effective-parameter column (default: {N_EFF})")
        q.add_argument(
            "--core-params",
            type=float,
            help="compute N_eff = other + μ_rec·core from the μ_rec column instead of reading --n-col",
        )
        q.add_argument("--other-params", type=float, help="non-recurrent parameters, with --core-params")
        q.add_argument("--delta", type=float, default=HUBER_DELTA, help="Huber delta on log-loss residuals")
        q.add_argument(
            "--n-starts", type=int, default=32, help="solver runs, from the best-scoring random inits"
        )
        q.add_argument(
            "--n-candidates", type=int, default=4096, help="random inits screened for the restarts"
        )
        q.add_argument("--seed", type=int, default=0)

    q = common("isoflop", "iso-FLOP analysis: per-budget parabolas and power laws of the optima")
    q.add_argument("--flops-col", default=FLOPS, help=f"nominal FLOP-budget column (default: {FLOPS})")
    q.add_argument(
        "--x-cols",
        nargs="+",
        default=[MEAN_RECURRENCE, TOKENS],
        help=f"columns whose optimum to fit per budget (default: {MEAN_RECURRENCE} {TOKENS})",
    )
    q.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default: 1000)")
    q.add_argument("--ci", type=float, default=0.95, help="confidence level (default: 0.95)")
    q.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    q.add_argument(
        "--bootstrap",
        type=Bootstrap,
        choices=list(Bootstrap),
        default=Bootstrap.RUNS,
        metavar="{" + ",".join(b.value for b in Bootstrap) + "}",
        help="resample runs within each budget (default) or the parabola residuals",
    )
    q.add_argument(
        "--max-extrapolation",
        type=float,
        default=1.5,
        help="drop a budget whose vertex lies more than this factor outside its sampled range (default 1.5)",
    )
    q.set_defaults(func=fit_isoflop_cmd)

    q = common("parametric", "parametric law L = E + A·N_eff^(−α) + B·D^(−β) (Huber on log-loss)")
    law_options(q)
    q.set_defaults(func=fit_parametric_cmd)

    q = common("testtime", "test-time law L(T) = L∞ + Z·exp(−z·T), one fit per model")
    q.add_argument(
        "--steps-col", default=NUM_STEPS, help=f"test-time recurrence column (default: {NUM_STEPS})"
    )
    q.add_argument(
        "--group-col",
        help=f"one curve per value of this column (default: {MEAN_RECURRENCE} if present, else one curve)",
    )
    q.set_defaults(func=fit_testtime_cmd)

    q = common("unified", "unified law L = E + X·N^(−x) + Y·D^(−y) + Z·exp(−z·T/μ_rec^γ)")
    law_options(q)
    q.add_argument(
        "--steps-col", default=NUM_STEPS, help=f"test-time recurrence column (default: {NUM_STEPS})"
    )
    q.add_argument("--learn-gamma", action="store_true", help="fit γ too (the paper fixes γ = 1)")
    q.set_defaults(func=fit_unified_cmd)


def fit_isoflop_cmd(args) -> int:
    table = RunTable.read(args.results)
    flops, loss = table.numeric(args.flops_col), table.numeric(args.loss_col)
    results, files, md = {}, [], []
    for col in args.x_cols:
        fit = fit_isoflop(
            flops,
            table.numeric(col),
            loss,
            variable=col,
            n_boot=args.n_boot,
            ci=args.ci,
            seed=args.seed,
            max_extrapolation=args.max_extrapolation,
            bootstrap=args.bootstrap,
        )
        results[col] = fit.to_dict()
        md.append(report.markdown_isoflop(fit))
        files.append(plots.plot_isoflop(fit, args.out / f"isoflop_{col}.png", loss_label=args.loss_col))
        files.append(plots.plot_power_law(fit, args.out / f"powerlaw_{col}.png"))
    columns = {"flops": args.flops_col, "x": args.x_cols, "loss": args.loss_col}
    return _finish(args, "isoflop", table, columns, results, "\n".join(md), files)


def _n_eff(args, table: RunTable) -> tuple[np.ndarray, str]:
    if args.core_params is None:
        if args.other_params is not None:
            raise ConfigError("--other-params needs --core-params")
        return table.numeric(args.n_col), args.n_col
    if args.other_params is None:
        raise ConfigError("--core-params needs --other-params (the non-recurrent parameter count)")
    n = effective_params(args.core_params, args.other_params, table.numeric(args.mu_col))
    return n, f"{args.other_params:g} + {args.mu_col} * {args.core_params:g}"


def _huber_settings(args) -> HuberSettings:
    return HuberSettings(
        delta=args.delta, n_starts=args.n_starts, n_candidates=args.n_candidates, seed=args.seed
    )


def fit_parametric_cmd(args) -> int:
    table = RunTable.read(args.results)
    n_eff, n_source = _n_eff(args, table)
    tokens, loss = table.numeric(args.tokens_col), table.numeric(args.loss_col)
    fit = fit_parametric(n_eff, tokens, loss, _huber_settings(args))
    title = f"L = E + A·N^(−{fit['alpha']:.3f}) + B·D^(−{fit['beta']:.3f})"
    predicted = fit.predict({N_EFF: n_eff, TOKENS: tokens})
    files = [plots.plot_parity(loss, predicted, args.out / "parametric_parity.png", title=title)]
    columns = {"n_eff": n_source, "tokens": args.tokens_col, "loss": args.loss_col}
    return _finish(args, "parametric", table, columns, fit.to_dict(), report.markdown_law(fit), files)


def fit_testtime_cmd(args) -> int:
    table = RunTable.read(args.results)
    group_col = args.group_col
    if group_col is None and table.has(MEAN_RECURRENCE):
        group_col = MEAN_RECURRENCE
    groups = table.raw(group_col) if group_col else None
    fits = fit_test_time_groups(
        table.numeric(args.steps_col), table.numeric(args.loss_col), groups, group_column=group_col
    )
    files = [plots.plot_test_time(fits, args.out / "testtime.png", loss_label=args.loss_col)]
    columns = {"steps": args.steps_col, "loss": args.loss_col, "group": group_col}
    return _finish(args, "testtime", table, columns, fits.to_dict(), report.markdown_testtime(fits), files)


def fit_unified_cmd(args) -> int:
    table = RunTable.read(args.results)
    n_eff, n_source = _n_eff(args, table)
    mu, tokens = table.numeric(args.mu_col), table.numeric(args.tokens_col)
    steps, loss = table.numeric(args.steps_col), table.numeric(args.loss_col)
    settings = _huber_settings(args)
    fit = fit_unified(mu, n_eff, tokens, steps, loss, learn_gamma=args.learn_gamma, settings=settings)
    data = {MEAN_RECURRENCE: mu, N_EFF: n_eff, TOKENS: tokens, NUM_STEPS: steps}
    files = [
        plots.plot_parity(
            loss,
            fit.predict(data),
            args.out / "unified_parity.png",
            title="unified law: predicted vs observed",
            color_by=steps,
            color_label="test-time recurrence T",
        )
    ]
    columns = {
        "mean_recurrence": args.mu_col,
        "n_eff": n_source,
        "tokens": args.tokens_col,
        "steps": args.steps_col,
        "loss": args.loss_col,
    }
    return _finish(args, "unified", table, columns, fit.to_dict(), report.markdown_law(fit), files)


def _finish(args, kind: str, table: RunTable, columns: dict, result: dict, markdown: str, files) -> int:
    out: Path = args.out
    payload = {"source": table.source, "rows": len(table.rows), "columns": columns, "result": result}
    json_path, md_path = out / f"{kind}.json", out / f"{kind}.md"
    atomic_write_text(json_path, json.dumps(json_safe(payload), indent=2) + "\n")
    atomic_write_text(md_path, f"# {kind} fit of {table.source}\n\n{markdown}")
    print(markdown)
    for path in [json_path, md_path, *files]:
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------------
# parcae sweep


def _register_sweep(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of training runs from a sweep YAML (resumable), or emit torchrun/Slurm commands",
        description="Expand SWEEP.yaml (base run config + axes) into runs, derive each point's steps from its "
        "budget, run the unfinished points one after another and write "
        "results.csv / results.jsonl (the columns `parcae fit` reads).",
    )
    p.add_argument("sweep", type=Path, help="sweep file (YAML: name, base, overrides, axes, smoke)")
    p.add_argument("--smoke", action="store_true", help="the sweep file's seconds-long smoke variant")
    p.add_argument("--out", type=Path, help="output directory (default: sweeps/<name>)")
    p.add_argument(
        "--emit",
        type=Emit,
        choices=list(Emit),
        metavar="{" + ",".join(e.value for e in Emit) + "}",
        help="instead of running: write each unfinished point's run config to OUT/configs/ and print one "
        "`parcae train --config` command per point",
    )
    p.add_argument("--nproc-per-node", type=int, default=8, help="processes (GPUs) per point with --emit")
    p.add_argument(
        "--slurm-args", default="", help="extra sbatch options with --emit slurm, e.g. '-p gpu -t 24:00:00'"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the points, their budgets and status; run nothing"
    )
    p.add_argument(
        "--collect", action="store_true", help="only (re)write the results table from finished points"
    )
    p.set_defaults(func=sweep_cmd)


def sweep_cmd(args) -> int:
    spec = SweepSpec.from_yaml(args.sweep, smoke=args.smoke)
    out = args.out or Path("sweeps") / spec.name
    if args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    if args.emit is not None or args.dry_run:
        points = expand(spec, out)
        if args.emit is not None:
            lines = emit_commands(
                points, args.emit, nproc_per_node=args.nproc_per_node, slurm_args=args.slurm_args
            )
            done = len(points) - len(lines)
            print(f"# sweep {spec.name}: {len(points)} points, {done} finished, {len(lines)} to run")
            print("\n".join(lines))
            return 0
        print(f"sweep {spec.name}: {len(points)} points -> {out}")
        for p in points:
            budget = f"C={p.flops_budget:.3g} " if p.flops_budget is not None else ""
            state = "done" if p.finished() else "todo"
            print(
                f"  [{state}] {p.name}: {budget}{p.flops_per_token:.4g} FLOPs/token, {p.steps} steps, "
                f"{p.tokens:,} tokens, {p.params / 1e6:.3f}M params"
            )
        return 0
    result = run_sweep(spec, out, collect_only=args.collect)
    print(
        f"sweep {spec.name}: {len(result.points)} points, ran {len(result.ran)}, skipped {len(result.skipped)} "
        f"finished; {len(result.rows)} rows"
    )
    for row in result.rows:
        loss = row.get(LOSS)
        print(f"  {row['point']}: {row['status']}, val_loss {'-' if loss is None else f'{loss:.4f}'}")
    print(f"wrote {result.csv}\nwrote {result.jsonl}")
    return 0
