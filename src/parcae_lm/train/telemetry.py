"""What a run reports while it trains: metrics.jsonl (always), TensorBoard and W&B (offline, optional),
throughput and MFU over each logging window, a progress bar, and curves.png at the end.

metrics.jsonl gets one JSON object per line, each written whole and flushed. A process killed mid-write
can leave its last line torn; readers drop such a last line (with a warning), and a resume rewrites the
file atomically with the records up to its checkpoint. A damaged line anywhere else is an error naming it.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from parcae_lm.errors import ConfigError, TrainingError
from parcae_lm.files import atomic_write_text, write_failure
from parcae_lm.train.distributed import all_reduce_sum


class MetricsLogger:
    """Rank-0 sink for scalar records: JSONL plus the optional trackers (imported only when enabled)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool,
        wandb: bool,
        wandb_project: str,
        run_name: str,
        config: dict[str, Any],
        resume_step: int | None,
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        kept = []
        if resume_step is not None:  # drop what an interrupted run logged after its last checkpoint
            kept = [
                r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step and not r.get("final")
            ]
        # Rewritten whole, then appended to: a crash during the rewrite keeps the old file.
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept), "the metrics")
        try:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        except OSError as e:
            raise write_failure(e, self.path, "the metrics") from e
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError(
                    "tensorboard=true needs the tensorboard package: pip install 'parcae-lm[track]'"
                ) from e
            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError as e:
                raise ConfigError("wandb=true needs the wandb package: pip install 'parcae-lm[track]'") from e
            self._wandb = wandb_lib.init(
                project=wandb_project,
                name=run_name,
                dir=str(run_dir),
                mode="offline",
                config=config,
                resume="allow",
                id=run_name,
            )

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        try:
            self._file.write(json.dumps(clean) + "\n")  # one line, one write
            self._file.flush()
        except OSError as e:
            raise write_failure(e, self.path, "the metrics") from e
        step = int(record.get("step", 0))
        scalars = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
        kind = record.get("kind", "train")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{kind}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # every line was flushed (or its failure reported) already
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class Throughput:
    """The training steps since the last record: summed loss (on device), tokens and wall time, turned into
    the record's mean loss (over ranks), tokens/s and MFU (model FLOPs over the measured matmul peak)."""

    def __init__(
        self, device: torch.device, flops_per_token: float, peak_flops: float, world_size: int
    ) -> None:
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self._loss = torch.zeros((), device=device)
        self._steps, self._tokens, self._t0 = 0, 0, time.perf_counter()

    def add(self, step_loss: torch.Tensor, tokens: int) -> None:
        self._loss += step_loss
        self._steps += 1
        self._tokens += tokens

    def exclude(self, seconds: float) -> None:
        """Leave time spent outside training steps (periodic evaluation) out of the throughput."""
        self._t0 += seconds

    def record(self, grad_norm: torch.Tensor) -> dict[str, float]:
        """loss, grad_norm (means over ranks), tok_per_s and mfu of the window; starts the next window.
        A collective under torch.distributed."""
        stats = torch.stack([self._loss / max(self._steps, 1), grad_norm.float()]).float()
        all_reduce_sum(stats)
        stats /= self.world_size
        tok_s = self._tokens / max(time.perf_counter() - self._t0, 1e-9)
        self._loss.zero_()
        self._steps, self._tokens, self._t0 = 0, 0, time.perf_counter()
        return {
            "loss": stats[0].item(),
            "grad_norm": stats[1].item(),
            "tok_per_s": tok_s,
            "mfu": tok_s * self.flops_per_token / (self.peak_flops * self.world_size),
        }


class ProgressBar:
    """A tqdm bar over optimizer steps, or over seconds for a time budget (rank 0 only; off when disabled)."""

    def __init__(
        self, enabled: bool, max_steps: int | None, train_seconds: float | None, step: int, elapsed: float
    ):
        self.by_time = max_steps is None
        self._bar = None
        if not enabled:
            return
        if self.by_time:
            fmt = "{l_bar}{bar}| {n:.0f}/{total}s [{elapsed}<{remaining}{postfix}]"
            self._bar = tqdm(
                total=round(train_seconds),
                initial=round(elapsed),
                unit="s",
                dynamic_ncols=True,
                bar_format=fmt,
            )
        else:
            self._bar = tqdm(total=max_steps, initial=step, unit="step", dynamic_ncols=True)

    def step(self, seconds: float) -> None:
        if self._bar is not None:
            self._bar.update(min(seconds, self._bar.total - self._bar.n) if self.by_time else 1)

    def overhead(self, seconds: float) -> None:
        """Time outside the steps (evaluation, checkpoints) moves a time bar only."""
        if self._bar is not None and self.by_time:
            self._bar.update(min(seconds, self._bar.total - self._bar.n))

    def show(self, record: dict[str, Any]) -> None:
        if self._bar is not None:
            postfix = {
                "step": record["step"],
                "loss": f"{record['loss']:.3f}",
                "tok_s": f"{record['tok_per_s']:.0f}",
            }
            self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def say(enabled: bool, message: str) -> None:
    """A line of run output (rank 0), printed above the progress bar."""
    if enabled:
        tqdm.write(message)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl ([] if there is none). A torn last line (its writer was killed
    mid-write) is dropped with a warning; a damaged line before it raises TrainingError naming it."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    records = []
    for n, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a {type(record).__name__}, not an object")
        except ValueError as e:
            if n == len(numbered) - 1:
                warnings.warn(f"{path}:{lineno}: dropping a torn last line ({e})", stacklevel=2)
                break
            raise TrainingError(
                f"{path}:{lineno} is not a JSON object ({e}); the metrics file is damaged: remove that line "
                "to use it"
            ) from None
        records.append(record)
    return records


def plot_curves(metrics_path: Path, out_path: Path, title: str) -> Path | None:
    """Train loss, validation bpb per depth and the LR schedule against step, as a PNG."""
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train" and r.get("loss") is not None]
    val = [r for r in records if r.get("kind") == "val" and not r.get("final")]
    final = [r for r in records if r.get("kind") == "val" and r.get("final")]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("train loss")
    ax.grid(alpha=0.3)
    ax = axes[1]
    depth_keys = sorted({k for r in val + final for k in r if k.startswith("bpb")}, key=lambda k: (len(k), k))
    for key in depth_keys:
        label = "val bpb" if key == "bpb" else f"val bpb, depth {key.split('_d')[-1]}"
        pts = [(r["step"], r[key]) for r in val if r.get(key) is not None]
        if pts:
            (line,) = ax.plot(*zip(*pts), marker="o", label=label)
            color = line.get_color()
        else:
            color = None
        # Periodic evals use `eval_batches` batches; the final one the whole split: mark it apart.
        end = [(r["step"], r[key]) for r in final if r.get(key) is not None]
        if end:
            ax.scatter(*zip(*end), marker="*", s=120, color=color, label=f"{label} (final, full split)")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.set_title("validation")
    ax.grid(alpha=0.3)
    if depth_keys:
        ax.legend(fontsize=8)
    ax = axes[2]
    for key in ("adam_lr", "muon_lr"):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key)
    ax.set_xlabel("step")
    ax.set_title("learning rate")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path
