"""A finished sweep point as one results-table row: its budget and size, its losses, and the stability
telemetry of its training curve (divergence, loss spikes, state norm, spectral radius).

The row carries the column names `parcae fit` reads (flops, mean_recurrence, tokens, n_eff, num_steps,
val_loss; see `table`) plus bpb, per-depth losses (val_loss_d4, val_bpb_d4, ...) and the telemetry.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any

from parcae_lm.scaling.sweep import DIVERGED, SUMMARY, SweepPoint
from parcae_lm.scaling.table import FLOPS, LOSS, MEAN_RECURRENCE, N_EFF, NUM_STEPS, TOKENS
from parcae_lm.train.telemetry import read_metrics

# A loss spike: a logged training loss above SPIKE_FACTOR x the running minimum of the losses logged
# before it, counted only after the first SPIKE_WARMUP_FRACTION of the run (or the LR warmup, if longer):
# the first steps fall from ln(V) and have no meaningful minimum yet.
SPIKE_FACTOR = 1.5
SPIKE_WARMUP_FRACTION = 0.1


class Status(enum.StrEnum):
    OK = "ok"
    DIVERGED = "diverged"  # the trainer stopped on a non-finite loss / gradient / weight


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def spike_stats(
    steps: list[int], losses: list[float | None], total_steps: int, warmup_steps: int = 0
) -> dict[str, Any]:
    """Loss spikes of a training curve (see SPIKE_FACTOR) and whether it ended above its running minimum."""
    start = max(warmup_steps, int(SPIKE_WARMUP_FRACTION * total_steps))
    running_min = math.inf
    spikes, worst = 0, 1.0
    for s, loss in zip(steps, losses):
        if loss is None or not math.isfinite(loss):
            spikes += 1
            worst = math.inf
            continue
        if s > start and math.isfinite(running_min):
            ratio = loss / running_min
            worst = max(worst, ratio)
            if ratio > SPIKE_FACTOR:
                spikes += 1
        running_min = min(running_min, loss)
    final = next((x for x in reversed(losses) if x is not None), None)
    end_ratio = final / running_min if final is not None and math.isfinite(running_min) else math.inf
    return {"loss_spikes": spikes, "max_loss_over_min": worst, "final_loss_over_min": end_ratio}


def _point_columns(point: SweepPoint) -> dict[str, Any]:
    """What the point was: its axis values, budget, size and depths."""
    mcfg = point.model_config
    mu = mcfg.mean_recurrence if mcfg.is_parcae else None
    return {
        "point": point.name,
        **point.settings,
        FLOPS: point.flops,
        "flops_actual": point.tokens * point.flops_per_token,
        "flops_per_token": point.flops_per_token,
        "model": mcfg.name,
        MEAN_RECURRENCE: mu,
        "mean_backprop_depth": mcfg.mean_backprop_depth if mcfg.is_parcae else None,
        NUM_STEPS: mu,  # the depth val_loss is measured at
        TOKENS: point.tokens,
        "steps": point.steps,
        "params": point.params,
        "core_params": point.core_params,
        N_EFF: point.n_eff,
    }


def collect_point(point: SweepPoint) -> dict[str, Any] | None:
    """One results-table row for a finished point (None if it has not run)."""
    run_dir = point.run_dir
    summary_path, diverged_path = run_dir / SUMMARY, run_dir / DIVERGED
    if not summary_path.is_file() and not diverged_path.is_file():
        return None
    row = _point_columns(point)
    train = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        row["status"] = Status.OK.value
        row[LOSS] = summary["val_loss"]
        row["val_bpb"] = summary["val_bpb"]
        for k, v in sorted(summary.get("val", {}).items()):
            if "_d" in k:  # loss_d4 -> val_loss_d4, bpb_d4 -> val_bpb_d4
                row[f"val_{k}"] = v
        row["train_seconds"] = summary.get("train_seconds")
    else:
        row["status"] = Status.DIVERGED.value
        row[LOSS] = None
        row["val_bpb"] = None
    diverged = row["status"] == Status.DIVERGED
    row["diverged_step"] = (train[-1]["step"] if train else 0) if diverged else None
    steps = [int(r["step"]) for r in train]
    losses = [_finite(r.get("loss")) for r in train]
    if diverged:
        losses.append(None)  # the step that stopped the run
        steps.append(steps[-1] + 1 if steps else 1)
    warmup = int(point.config.optim.warmup_fraction * point.steps)
    row.update(spike_stats(steps, losses, point.steps, warmup))
    row["train_loss_final"] = next((x for x in reversed(losses) if x is not None), None)
    row["train_loss_min"] = min((x for x in losses if x is not None), default=None)
    # Diverged: stopped on a non-finite value, or ended far above its best loss (blew up, never recovered).
    row["diverged"] = diverged or row["final_loss_over_min"] > SPIKE_FACTOR
    for key in ("state_norm", "spectral_radius", "rel_residual", "grad_norm"):
        vals = [v for v in (_finite(r.get(key)) for r in train) if v is not None]
        if vals:
            row[f"{key}_first"] = vals[0]
            row[f"{key}_final"] = vals[-1]
            row[f"{key}_max"] = max(vals)
    if row.get("state_norm_first"):
        row["state_norm_growth"] = row["state_norm_final"] / row["state_norm_first"]
    row["run_dir"] = str(run_dir)
    return row
