"""Running a sweep: train every unfinished point in order, then write one results table.

Each point trains through the library's `train` (the entry point of `parcae train`) into
`OUT/runs/<point name>`. A point is finished when its run directory holds `summary.json` (or
`diverged.json`, written here when the trainer stopped on a non-finite value), so a second invocation
skips it and an interrupted point resumes from its last checkpoint. `OUT/sweep.json` records the plan;
`OUT/results.csv` and `OUT/results.jsonl` hold one row per finished point (`collect`), rewritten after
every point so an interrupted sweep still leaves a usable table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from parcae_lm.errors import TrainingError
from parcae_lm.files import atomic_write_text
from parcae_lm.scaling.collect import Status, collect_point
from parcae_lm.scaling.sweep import DIVERGED, SweepPoint, SweepSpec, expand
from parcae_lm.scaling.table import json_default, write_table
from parcae_lm.train import train


def run_point(point: SweepPoint) -> Status:
    """Train one point. A non-finite stop is a result (diverged), not an error."""
    try:
        train(point.config)
    except TrainingError as e:
        record = {"status": Status.DIVERGED.value, "error": str(e), "point": point.name}
        atomic_write_text(point.run_dir / DIVERGED, json.dumps(record, indent=2) + "\n")
        return Status.DIVERGED
    return Status.OK


@dataclass
class SweepResult:
    out_dir: Path
    points: list[SweepPoint]
    rows: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    csv: Path
    jsonl: Path


def run_sweep(
    spec: SweepSpec, out_dir: str | Path, *, collect_only: bool = False, progress: bool = True
) -> SweepResult:
    """Run every unfinished point in order (resumable), then write the results table. With
    `collect_only`, only (re)write the table from the points that have finished."""
    out = Path(out_dir)
    points = expand(spec, out)
    plan = {"spec": spec.to_dict(), "points": [_plan_entry(p) for p in points]}
    atomic_write_text(out / "sweep.json", json.dumps(plan, indent=2, default=json_default) + "\n")
    for p in points:
        p.check_run_dir()
    todo = [p for p in points if not p.finished()]
    skipped = [p.name for p in points if p.finished()]
    ran = []
    if not collect_only:
        bar = tqdm(todo, desc=f"sweep {spec.name}", unit="run", disable=not progress)
        for p in bar:
            bar.set_postfix_str(p.name)
            run_point(p)
            ran.append(p.name)
            write_table(_rows(points), out)
    rows = _rows(points)
    csv_path, jsonl_path = write_table(rows, out)
    return SweepResult(out, points, rows, ran, skipped, csv_path, jsonl_path)


def _rows(points: list[SweepPoint]) -> list[dict[str, Any]]:
    return [r for r in (collect_point(p) for p in points) if r is not None]


def _plan_entry(p: SweepPoint) -> dict[str, Any]:
    return {
        "name": p.name,
        "settings": p.settings,
        "run_dir": str(p.run_dir),
        "flops_budget": p.flops_budget,
        "flops_per_token": p.flops_per_token,
        "steps": p.steps,
        "tokens": p.tokens,
        "params": p.params,
        "n_eff": p.n_eff,
    }
