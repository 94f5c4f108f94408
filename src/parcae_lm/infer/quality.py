"""Quality of inference-time approximations, measured as validation bits per byte.

Text is scored *token by token* through the KV cache — exactly how it is consumed when generating — so
that adaptive depth and shared-slot caches (which only differ from the exact model across decode steps)
are measured where they act. With the full cache and a fixed depth this equals the parallel forward to
float rounding; that number is the baseline every approximation is compared with.

Byte accounting follows `eval.bpb`: a target is scored when it is not padding and stands for ≥ 1 byte.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor
from tqdm import tqdm

from parcae_lm.data.loader import iter_eval_batches
from parcae_lm.data.shards import check_shards
from parcae_lm.errors import EvalError
from parcae_lm.infer.adaptive import AdaptiveDecoder, ExitCriterion, ExitRule
from parcae_lm.model import FULL_CACHE, IGNORE_INDEX, CacheStrategy, LanguageModel
from parcae_lm.tokenizer import Tokenizer


@dataclass
class StepwiseResult:
    label: str
    bits_per_byte: float
    loss: float
    tokens: int
    bytes: int
    mean_iterations: float  # core iterations per scored token (adaptive depth)
    kv_cache_bytes: int
    core_flops_fraction: float  # mean_iterations / max_steps

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def stepwise_bpb(
    model: LanguageModel,
    batches: Iterable[tuple[Tensor, ...]],
    token_bytes: Tensor,
    rule: ExitRule | None = None,
    strategy: CacheStrategy = FULL_CACHE,
    label: str = "",
    progress: bool = False,
) -> StepwiseResult:
    """bpb of (x, y[, ...]) batches scored one token at a time with `rule` (None: fixed depth)."""
    rule = rule or ExitRule(threshold=0.0)
    nats, tokens, nbytes, iters = 0.0, 0, 0, 0
    kv_bytes, max_steps = 0, 1
    token_bytes = token_bytes.to(model.device)
    vocab = model.config.vocab_size
    for batch in tqdm(list(batches), desc=label or "stepwise bpb", disable=not progress, leave=False):
        x, y = batch[0].to(model.device), batch[1].to(model.device)
        B, T = x.shape
        dec = AdaptiveDecoder(model, B, T, rule, strategy)
        kv_bytes, max_steps = dec.cache.memory_bytes(), dec.max_steps
        valid = y != IGNORE_INDEX
        tb = torch.where(valid, token_bytes[y.clamp(min=0)], 0)
        for t in range(T):
            logits = dec.step(x[:, t])[:, :vocab]  # padding rows are never a valid prediction
            scored = tb[:, t] > 0
            if not bool(scored.any()):
                continue
            nll = F.cross_entropy(logits.float(), y[:, t].clamp(min=0), reduction="none")
            if not torch.isfinite(nll[scored]).all():
                raise EvalError(f"non-finite loss at position {t} ({label})")
            nats += float(nll[scored].double().sum())
            tokens += int(scored.sum())
            nbytes += int(tb[scored, t].sum())
            iters += int(dec.last_depths[scored].sum())
    if tokens == 0 or nbytes == 0:
        raise EvalError("no scored tokens in the evaluation batches")
    mean_it = iters / tokens
    return StepwiseResult(
        label=label,
        bits_per_byte=nats / (math.log(2) * nbytes),
        loss=nats / tokens,
        tokens=tokens,
        bytes=nbytes,
        mean_iterations=mean_it,
        kv_cache_bytes=kv_bytes,
        core_flops_fraction=mean_it / max_steps,
    )


def validation_batches(
    shard_dir, seq_len: int, batch_size: int, num_batches: int, tokenizer: Tokenizer
) -> list[tuple[Tensor, ...]]:
    """The first `num_batches` batches of the validation split (no document masking: a cache sees one
    stream per row), from shards checked to be written by `tokenizer`."""
    check_shards(shard_dir, tokenizer)
    out = []
    for batch in iter_eval_batches(shard_dir, "val", batch_size, seq_len):
        out.append(batch)
        if len(out) == num_batches:
            break
    if not out:
        raise EvalError(f"no validation batches in {shard_dir}")
    return out


def adaptive_sweep(
    model: LanguageModel,
    batches: list[tuple[Tensor, ...]],
    token_bytes: Tensor,
    criterion: ExitCriterion,
    thresholds: list[float],
    max_steps: int | None = None,
    strategy: CacheStrategy = FULL_CACHE,
    progress: bool = True,
) -> list[StepwiseResult]:
    """Fixed depths 1..max (the budget baseline) and `criterion` at every threshold, on the same text."""
    R = max_steps or model.config.mean_recurrence
    rules = [(f"fixed-{d}", ExitRule(ExitCriterion.BUDGET, max_steps=d)) for d in range(1, R + 1)]
    rules += [(f"{criterion.value}-{t:g}", ExitRule(criterion, t, max_steps=R)) for t in thresholds]
    out = []
    for label, rule in tqdm(rules, desc="sweep", disable=not progress):
        r = stepwise_bpb(model, batches, token_bytes, rule, strategy, label)
        r.core_flops_fraction = r.mean_iterations / R  # relative to the full depth, also for fixed-d
        out.append(r)
    return out


def plot_quality_compute(results: list[StepwiseResult], path, title: str = "") -> None:
    """bpb vs mean core iterations per token: fixed depths as a line, each exit criterion as points."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    series: dict[str, list[StepwiseResult]] = {}
    for r in results:
        series.setdefault(r.label.rsplit("-", 1)[0], []).append(r)
    for name, rs in series.items():
        rs = sorted(rs, key=lambda r: r.mean_iterations)
        style = "o-" if name == "fixed" else "s--"
        ax.plot([r.mean_iterations for r in rs], [r.bits_per_byte for r in rs], style, label=name)
    ax.set_xlabel("mean core iterations per token")
    ax.set_ylabel("validation bits per byte (token-by-token, cached)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
