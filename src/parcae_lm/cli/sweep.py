"""`parcae sweep FILE`: a grid of training runs from a sweep YAML (resumable), or the commands to run it."""

from __future__ import annotations

from pathlib import Path

from jsonargparse.typing import PositiveInt

from parcae_lm.scaling.emit import Emit, emit_commands
from parcae_lm.scaling.runner import run_sweep
from parcae_lm.scaling.sweep import SweepSpec, expand
from parcae_lm.scaling.table import LOSS


def sweep(
    file: Path,
    /,
    *,
    smoke: bool = False,
    out: Path | None = None,
    emit: Emit | None = None,
    nproc_per_node: PositiveInt = 8,
    slurm_args: str = "",
    dry_run: bool = False,
    collect: bool = False,
) -> None:
    """Run a grid of training runs from a sweep YAML (resumable), or emit torchrun/Slurm commands.

    Expands FILE (base run config + axes) into runs, derives each point's steps from its budget, runs the
    unfinished points one after another and writes results.csv / results.jsonl (the columns
    `parcae fit` reads).

    Args:
        file: Sweep file (YAML: name, base, overrides, axes, smoke).
        smoke: Run the sweep file's seconds-long smoke variant.
        out: Output directory (default: sweeps/<name>).
        emit: Instead of running: write each unfinished point's run config to OUT/configs/ and print one
            `parcae train --config` command per point, for torchrun or Slurm.
        nproc_per_node: Processes (GPUs) per point, with --emit.
        slurm_args: Extra sbatch options with --emit slurm, e.g. '-p gpu -t 24:00:00'.
        dry_run: Print the points, their budgets and status; run nothing.
        collect: Only (re)write the results table from the finished points.
    """
    spec = SweepSpec.from_yaml(file, smoke=smoke)
    out = out or Path("sweeps") / spec.name
    if emit is not None:
        points = expand(spec, out)
        lines = emit_commands(points, emit, nproc_per_node=nproc_per_node, slurm_args=slurm_args)
        print(
            f"# sweep {spec.name}: {len(points)} points, {len(points) - len(lines)} finished, {len(lines)} to run"
        )
        print("\n".join(lines))
        return
    if dry_run:
        points = expand(spec, out)
        print(f"sweep {spec.name}: {len(points)} points -> {out}")
        for p in points:
            budget = f"C={p.flops_budget:.3g} " if p.flops_budget is not None else ""
            state = "done" if p.finished() else "todo"
            print(
                f"  [{state}] {p.name}: {budget}{p.flops_per_token:.4g} FLOPs/token, {p.steps} steps, "
                f"{p.tokens:,} tokens, {p.params / 1e6:.3f}M params"
            )
        return
    result = run_sweep(spec, out, collect_only=collect)
    print(
        f"sweep {spec.name}: {len(result.points)} points, ran {len(result.ran)}, skipped {len(result.skipped)} "
        f"finished; {len(result.rows)} rows"
    )
    for row in result.rows:
        loss = row.get(LOSS)
        print(f"  {row['point']}: {row['status']}, val_loss {'-' if loss is None else f'{loss:.4f}'}")
    print(f"wrote {result.csv}\nwrote {result.jsonl}")
