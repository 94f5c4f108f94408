"""What every evaluation shares: the model/tokenizer protocol, one forward at a chosen depth, padding,
depth sweeps and writing results (JSON + markdown + a PNG for sweeps)."""

from __future__ import annotations

import contextlib
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from parcae_lm.errors import EvalError
from parcae_lm.files import atomic_write_text


class EvalTokenizer(Protocol):
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    vocab_size: int

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def token_bytes(self) -> torch.Tensor: ...


def is_recurrent(model: torch.nn.Module) -> bool:
    """Looped models have a test-time depth; GPT configs have no mean_recurrence."""
    return getattr(model.config, "mean_recurrence", None) is not None


def model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def resolve_depths(model: torch.nn.Module, recurrence: Sequence[int] | None) -> list[int | None]:
    """The depths to evaluate at: the requested ones for a looped model, [None] (= its default) otherwise."""
    if not recurrence:
        return [None]
    if not is_recurrent(model):
        raise EvalError(
            "--recurrence only applies to looped (Parcae) models; this model has no mean_recurrence"
        )
    if any(r < 1 for r in recurrence):
        raise EvalError(f"recurrence depths must be >= 1, got {list(recurrence)}")
    return list(dict.fromkeys(recurrence))


def depth_label(model: torch.nn.Module, depth: int | None) -> str:
    if depth is not None:
        return str(depth)
    return str(model.config.mean_recurrence) if is_recurrent(model) else "default"


@torch.no_grad()
def forward_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    num_steps: int | None,
    doc_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp32 logits [B, T, vocab_size] at `num_steps` recurrences (bf16 autocast on CUDA, plain fp32 elsewhere).

    `num_steps` is only passed to looped models (None = the model's default depth); `doc_ids` masks
    attention to each token's own document."""
    kwargs: dict[str, Any] = {"return_logits": True}
    if num_steps is not None:
        kwargs["num_steps"] = num_steps
    if doc_ids is not None:
        kwargs["doc_ids"] = doc_ids
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if input_ids.device.type == "cuda"
        else contextlib.nullcontext()
    )
    with autocast:
        logits = model(input_ids, **kwargs)["logits"]
    # Only real token ids: the embedding table's padding rows are never a valid prediction.
    logits = logits[..., : model.config.vocab_size].float()
    if not torch.isfinite(logits).all():
        raise EvalError("the model produced non-finite logits (NaN/inf); the checkpoint or depth is unusable")
    return logits


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    """Right padding: with causal attention the pad never influences real positions."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out.to(device)


def pad_token(tokenizer: EvalTokenizer) -> int:
    for tok in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id):
        if tok is not None:
            return int(tok)
    return 0


def bos_token(tokenizer: EvalTokenizer) -> int:
    if tokenizer.bos_id is None:
        raise EvalError("the tokenizer has no BOS token; CORE/LAMBADA prompts start with BOS")
    return int(tokenizer.bos_id)


def wilson_interval(accuracy: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion measured on n examples (sound near 0 and 1, unlike the
    normal approximation)."""
    if n < 1 or not 0 < level < 1:
        raise EvalError(f"need n >= 1 and a level in (0, 1), got n={n}, level={level}")
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (divide by N), as the reference aggregates seeds."""
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def plot_sweep(
    path: Path, depths: Sequence[int], series: dict[str, Sequence[float]], ylabel: str, title: str
) -> None:
    """Score vs test-time recurrence depth, one line per series (log2 x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(depths, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(depths), [str(d) for d in depths])
    ax.set_xlabel("test-time recurrence depth")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
