"""Where training metrics go: metrics.jsonl (always), TensorBoard and W&B (offline, optional), curves.png.

Also the device's measured fp32 matmul peak, the denominator of MFU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parcae_lm.errors import ConfigError


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None:  # drop what an interrupted run logged after its last checkpoint
            kept = [
                r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step and not r.get("final")
            ]
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        for r in kept:
            self._file.write(json.dumps(r) + "\n")
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
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        step = int(record.get("step", 0))
        scalars = {k: v for k, v in record.items() if isinstance(v, int | float) and k != "step"}
        kind = record.get("kind", "train")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{kind}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
