"""Recurrence depth sampling: how many no-grad (n) and grad (k) iterations each unit runs in training.

A unit is the whole batch (per-batch), one sequence (per-sequence) or one token (per-token). With
t = mean_recurrence − mean_backprop_depth and s = mean_backprop_depth:

| scheme                 | n (no-grad)              | k (grad)           | E[n + k]              |
|------------------------|--------------------------|--------------------|-----------------------|
| poisson-truncated-full | T − k, T = max(1, P(t+s))| min(T, s)          | t + s + e^−(t+s)      |
| poisson-full           | 0                        | max(1, P(t+s))     | t + s + e^−(t+s)      |
| poisson-fill           | P(t)                     | s                  | t + s                 |
| poisson-unbounded      | P(t)                     | U{1..2s}           | t + s + ½             |
| poisson-bounded        | min(P(t), max(2t−1, 0))  | U{1..2s}           | see expected_depths   |
| fixed                  | t                        | s                  | t + s                 |

Unlike the reference, per-batch poisson-truncated-full runs T iterations in total (not T + min(T, s)).
Draws come from private generators seeded by (step, unit index), so runs are reproducible and a unit's
depth does not depend on how the global batch is split across ranks or micro-batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from parcae_lm.config import CurriculumKind, CurriculumTarget, IterationMethod, ParcaeConfig, SamplingScheme

_SEED_N, _SEED_K = 514229, 317811  # distinct streams for n and k draws


@dataclass(frozen=True)
class DepthShard:
    """Which slice of the global batch this forward computes: rows [index·B, (index+1)·B) of count·B."""

    index: int = 0
    count: int = 1


@dataclass(frozen=True)
class TrainDraw:
    """Where a training forward sits: its optimizer step and its slice of the global batch.

    Both seed the random choices of a training forward (sampled depths and the initial state h₀), so a
    run is reproducible and a row draws the same depth however the batch is split across ranks and
    micro-batches. The trainer passes one with every forward (`model(x, labels=y, draw=...)`)."""

    step: int = 0
    shard: DepthShard = DepthShard()


FIRST_DRAW = TrainDraw()  # step 0, the whole batch: the default of a training forward


@dataclass
class Depths:
    """No-grad and grad iteration counts: ints (a fixed depth) or int64 CPU tensors of shape [] (per batch),
    [B] (per sequence) or [B, T] (per token)."""

    n: Tensor | int
    k: Tensor | int

    @property
    def total(self) -> Tensor:
        return self.n + self.k


def curriculum_split(cfg: ParcaeConfig, step: int) -> tuple[int, int]:
    """(t, s) after the curriculum at `step` (the full values once step ≥ curriculum_steps)."""
    t = cfg.mean_recurrence - cfg.mean_backprop_depth
    s = cfg.mean_backprop_depth
    if cfg.curriculum == CurriculumKind.NONE or step >= cfg.curriculum_steps:
        return t, s
    frac = step / cfg.curriculum_steps
    progress = frac if cfg.curriculum == CurriculumKind.LINEAR else 1.0 - math.sqrt(1.0 - frac)
    if cfg.curriculum_target in (CurriculumTarget.FORWARD, CurriculumTarget.BOTH):
        t = math.ceil(progress * t)
    if cfg.curriculum_target in (CurriculumTarget.BACKWARD, CurriculumTarget.BOTH):
        s = max(math.ceil(progress * s), 1)
    return t, s


def mix_seed(*parts: int) -> int:
    """Hash integers into a 63-bit seed (splitmix64). Consecutive raw seeds give correlated first draws
    from torch's Mersenne Twister (mean Poisson(8) draws of 7.90 over seeds s, s+1, ...), hashed ones don't."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def _generator(base: int, step: int, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(base, seed, step))


def _poisson(rate: float, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    if rate <= 0:
        return torch.zeros(shape, dtype=torch.long)
    return torch.poisson(torch.full(shape, float(rate)), generator=g).long()


def _uniform(low: int, high: int, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    return torch.randint(low, high + 1, shape, generator=g)


def sample_depths(
    cfg: ParcaeConfig,
    step: int,
    batch_size: int,
    seq_len: int,
    shard: DepthShard = DepthShard(),
    seed: int = 0,
) -> Depths:
    """Training-time depths for this forward's rows of the global batch."""
    t, s = curriculum_split(cfg, step)
    method = cfg.recurrent_iteration_method
    if method == IterationMethod.PER_BATCH:
        shape: tuple[int, ...] = ()
    elif method == IterationMethod.PER_SEQUENCE:
        shape = (batch_size * shard.count,)
    else:
        shape = (batch_size * shard.count, seq_len)
    gn, gk = _generator(_SEED_N, step, seed), _generator(_SEED_K, step, seed)

    scheme = cfg.sampling_scheme
    if scheme == SamplingScheme.POISSON_TRUNCATED_FULL:
        total = _poisson(t + s, shape, gn).clamp_min(1)
        k = total.clamp_max(s)
        n = total - k
    elif scheme == SamplingScheme.POISSON_FULL:
        n = torch.zeros(shape, dtype=torch.long)
        k = _poisson(t + s, shape, gn).clamp_min(1)
    elif scheme == SamplingScheme.POISSON_FILL:
        n, k = _poisson(t, shape, gn), torch.full(shape, s, dtype=torch.long)
    elif scheme == SamplingScheme.POISSON_UNBOUNDED:
        n, k = _poisson(t, shape, gn), _uniform(1, 2 * s, shape, gk)
    elif scheme == SamplingScheme.POISSON_BOUNDED:
        n, k = _poisson(t, shape, gn).clamp_max(max(2 * t - 1, 0)), _uniform(1, 2 * s, shape, gk)
    else:
        n, k = torch.full(shape, t, dtype=torch.long), torch.full(shape, s, dtype=torch.long)

    if shape:  # keep this shard's rows
        rows = slice(shard.index * batch_size, (shard.index + 1) * batch_size)
        n, k = n[rows], k[rows]
    return Depths(n, k)


def _poisson_pmf(lam: float, j: int) -> float:
    return math.exp(-lam + j * math.log(lam) - math.lgamma(j + 1)) if lam > 0 else float(j == 0)


def _mean_min_clamped_poisson(lam: float, cap: int) -> float:
    """E[min(max(1, P(lam)), cap)] for cap ≥ 1."""
    return sum(min(max(1, j), cap) * _poisson_pmf(lam, j) for j in range(cap + 1)) + cap * max(
        0.0, 1.0 - sum(_poisson_pmf(lam, j) for j in range(cap + 1))
    )


def expected_depths(cfg: ParcaeConfig, step: int | None = None) -> tuple[float, float]:
    """Exact (E[n], E[k]) of the training distribution (after the curriculum at `step`, if given)."""
    t, s = curriculum_split(cfg, step) if step is not None else curriculum_split(cfg, cfg.curriculum_steps)
    scheme = cfg.sampling_scheme
    if scheme in (SamplingScheme.POISSON_TRUNCATED_FULL, SamplingScheme.POISSON_FULL):
        lam = t + s
        total = lam + math.exp(-lam)  # E[max(1, P(λ))]
        if scheme == SamplingScheme.POISSON_FULL:
            return 0.0, total
        ek = _mean_min_clamped_poisson(lam, s)
        return total - ek, ek
    if scheme == SamplingScheme.POISSON_FILL:
        return float(t), float(s)
    if scheme == SamplingScheme.POISSON_UNBOUNDED:
        return float(t), s + 0.5
    if scheme == SamplingScheme.POISSON_BOUNDED:
        cap = max(2 * t - 1, 0)
        en = sum(min(j, cap) * _poisson_pmf(t, j) for j in range(cap + 1)) + cap * max(
            0.0, 1.0 - sum(_poisson_pmf(t, j) for j in range(cap + 1))
        )
        return en, s + 0.5
    return float(t), float(s)
