"""Test-time depth study (paper §5.3): models trained at several μ_rec, evaluated at T = 1..16; the grid
is test-time.yaml.

    python experiments/test-time.py [--smoke] [--out studies/test-time]

Evaluates every trained model at each depth T (4096 validation tokens each; the whole smoke split with
--smoke, at T in {1, 2, 3, 4, 6}), writes that table to OUT/testtime/results.csv, fits
L(T) = L∞ + Z·exp(−z·T) per model and plots it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from harness import Context, Report, main

from parcae_lm.checkpoint import from_pretrained
from parcae_lm.eval.bpb import evaluate_bpb, shard_batches
from parcae_lm.scaling import plots
from parcae_lm.scaling.report import markdown_table, markdown_testtime
from parcae_lm.scaling.runner import SweepResult
from parcae_lm.scaling.table import LOSS, MEAN_RECURRENCE, NUM_STEPS, RunTable, write_table
from parcae_lm.scaling.testtime import fit_test_time_groups
from parcae_lm.tokenizer import Tokenizer

SWEEP = Path(__file__).with_suffix(".yaml")
DEPTHS, SMOKE_DEPTHS = list(range(1, 17)), [1, 2, 3, 4, 6]
EVAL_TOKENS = 4096  # per model and depth (None: the whole validation split)


def depth_sweep(
    run_dirs: list[str], shard_dir: Path, depths: list[int], seq_len: int, max_tokens: int | None
) -> list[dict[str, Any]]:
    """Validation loss / bpb of each trained model at every test-time depth (one pass over the data)."""
    out = []
    for run_dir in run_dirs:
        model = from_pretrained(run_dir, device="cpu")
        tokenizer = Tokenizer.load(Path(run_dir) / "tokenizer")
        token_bytes = torch.as_tensor(tokenizer.token_bytes(), dtype=torch.long)
        batches = shard_batches(shard_dir, "val", seq_len, 16, tokenizer)
        results = evaluate_bpb(model, batches, token_bytes, depths=depths, max_tokens=max_tokens)
        for depth, res in zip(depths, results):
            out.append(
                {
                    MEAN_RECURRENCE: model.config.mean_recurrence,
                    NUM_STEPS: depth,
                    LOSS: res.loss,
                    "val_bpb": res.bits_per_byte,
                    "eval_tokens": res.num_tokens,
                    "run_dir": run_dir,
                }
            )
    return out


def analyse(result: SweepResult, context: Context) -> Report:
    depths = SMOKE_DEPTHS if context.smoke else DEPTHS
    seq_len = result.points[0].config.data.seq_len
    ok = sorted((r for r in result.rows if r["status"] == "ok"), key=lambda r: r[MEAN_RECURRENCE])
    rows = depth_sweep(
        [r["run_dir"] for r in ok], context.data[1], depths, seq_len, None if context.smoke else EVAL_TOKENS
    )
    depth_dir = result.out_dir / "testtime"
    depth_dir.mkdir(parents=True, exist_ok=True)
    write_table(rows, depth_dir)
    table = RunTable(rows, "testtime")
    fits = fit_test_time_groups(
        table.numeric(NUM_STEPS),
        table.numeric(LOSS),
        table.raw(MEAN_RECURRENCE),
        group_column=MEAN_RECURRENCE,
    )
    mus = sorted({r[MEAN_RECURRENCE] for r in rows})
    grid = []
    for depth in depths:
        line: dict[str, Any] = {"T": depth}
        for mu in mus:
            hit = next(r for r in rows if r[MEAN_RECURRENCE] == mu and r[NUM_STEPS] == depth)
            line[f"mu{mu}"], line[f"bpb{mu}"] = hit[LOSS], hit["val_bpb"]
        grid.append(line)
    columns = [("T", "T")]
    for mu in mus:
        columns += [(f"mu{mu}", f"loss μ={mu}"), (f"bpb{mu}", f"bpb μ={mu}")]
    markdown = (
        f"Validation loss (nats/token) and bpb at test-time depth T; {rows[0]['eval_tokens']} scored tokens "
        f"per evaluation.\n\n{markdown_table(grid, columns)}\n{markdown_testtime(fits)}"
    )
    figures = [plots.plot_test_time(fits, context.fig_dir / "test-time.png")]
    return Report(markdown, figures, {"fits": fits.to_dict(), "depth_table": str(depth_dir / "results.csv")})


if __name__ == "__main__":
    sys.exit(main(SWEEP, analyse, __doc__))
