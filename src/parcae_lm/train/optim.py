"""MuonAdamW: Muon on the transformer blocks' matrices, AdamW on everything else, plus the schedules.

The split follows the reference: Muon orthogonalises the updates of the ≥2-D weights *inside* the
transformer blocks (attention c_q/c_k/c_v/c_proj, MLP fc/proj, the value-embedding gates); AdamW takes
the token and value embeddings, every norm, the injection (A_log, dt_bias, B or the linear adapter), the
output projection C and an untied lm_head. The split is made by module type, not by name patterns: a
parameter goes to Muon exactly when it is the weight of an `nn.Linear` that lives inside a `Block`.

Muon is `torch.optim.Muon`. Differences from the reference's NorMuon-flavoured MuonAdamW:
- Newton–Schulz uses Keller Jordan's quintic coefficients (3.4445, −4.775, 2.0315), 5 steps, after
  normalising by ‖u‖_F (the reference: five per-step "Polar Express" triples after dividing by 1.02·‖u‖_F).
- no NorMuon per-row second-moment rescaling of the orthogonalised update;
- weight decay is plain decoupled decay p ← p·(1 − lr·wd) instead of "cautious" decay (only where the
  update and the parameter share a sign);
- parameters are updated one by one rather than stacked per shape.
Matching: Nesterov momentum u = (1−μ)g + μ·m with m ← lerp(m, g, 1−μ), the shape-dependent LR scale
√max(1, rows/cols) ("original" adjust_lr_fn), lr 8e-3, momentum 0.85→0.95 over 300 steps, wd 0.2 → 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from parcae_lm.config.train import OptimArgs
from parcae_lm.model.layers import Block


@dataclass
class ParamSplit:
    muon: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    adamw: list[tuple[str, nn.Parameter]] = field(default_factory=list)


def split_parameters(model: nn.Module) -> ParamSplit:
    """Assign every trainable parameter to exactly one of Muon / AdamW (shared tensors once)."""
    muon_ids: set[int] = set()
    for _, module in model.named_modules():
        if not isinstance(module, Block):
            continue
        for sub in module.modules():
            if isinstance(sub, nn.Linear) and sub.weight.requires_grad and sub.weight.ndim == 2:
                muon_ids.add(id(sub.weight))
    split = ParamSplit()
    seen: set[int] = set()
    for name, p in model.named_parameters():  # named_parameters already skips tied duplicates
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (split.muon if id(p) in muon_ids else split.adamw).append((name, p))
    return split


class MuonAdamW:
    """Two torch optimizers stepped together, with the run config's hyperparameters and schedules."""

    def __init__(self, model: nn.Module, cfg: OptimArgs):
        split = split_parameters(model)
        if not split.adamw:
            raise ValueError("model has no AdamW parameters (embeddings, norms); is it a Parcae/GPT model?")
        self.split = split
        self.optimizers: list[torch.optim.Optimizer] = []
        self.muon: torch.optim.Muon | None = None
        if split.muon:
            self.muon = torch.optim.Muon(
                [p for _, p in split.muon],
                lr=cfg.muon_lr,
                weight_decay=cfg.muon_weight_decay,
                momentum=cfg.muon_momentum_warmup_start,
                nesterov=True,
                ns_steps=cfg.muon_ns_steps,
                adjust_lr_fn="original",
            )
            for g in self.muon.param_groups:
                g["base_lr"] = cfg.muon_lr
            self.optimizers.append(self.muon)
        self.adamw = torch.optim.AdamW(
            [p for _, p in split.adamw],
            lr=cfg.adam_lr,
            betas=tuple(cfg.adam_betas),
            eps=cfg.adam_eps,
            weight_decay=cfg.adam_weight_decay,
        )
        for g in self.adamw.param_groups:
            g["base_lr"] = cfg.adam_lr
        self.optimizers.append(self.adamw)

    def set_schedule(self, lr_factor: float, muon_momentum: float, muon_weight_decay: float) -> None:
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * lr_factor
        if self.muon is not None:
            for g in self.muon.param_groups:
                g["momentum"] = muon_momentum
                g["weight_decay"] = muon_weight_decay

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    @property
    def lrs(self) -> dict[str, float]:
        out = {"adam_lr": self.adamw.param_groups[0]["lr"]}
        if self.muon is not None:
            out["muon_lr"] = self.muon.param_groups[0]["lr"]
        return out

    @property
    def hyperparameters(self) -> dict[str, float]:
        """The scheduled values now: LRs, and Muon's momentum and weight decay."""
        out = self.lrs
        if self.muon is not None:
            out["muon_momentum"] = self.muon.param_groups[0]["momentum"]
            out["muon_wd"] = self.muon.param_groups[0]["weight_decay"]
        return out


# ---------------------------------------------------------------------- schedules


def lr_factor(progress: float, step_fraction: float, cfg: OptimArgs) -> float:
    """Multiplier on the base LRs at run progress `progress` ∈ [0, 1] (fraction of the budget used so far).

    Trapezoid: optional linear warmup over `warmup_fraction` (counted at the step's end, so the first step
    is not wasted at lr 0), constant, then linear decay to `min_lr_ratio` over the last `cooldown_fraction`
    (the reference: lr = base·(N − t)/C for t > N − C). `step_fraction` is one step's share of the budget.
    """
    p = min(max(progress, 0.0), 1.0)
    factor = 1.0
    if cfg.warmup_fraction > 0:
        factor = min(factor, (p + step_fraction) / cfg.warmup_fraction)
    if cfg.cooldown_fraction > 0 and p > 1.0 - cfg.cooldown_fraction:
        factor = min(factor, max((1.0 - p) / cfg.cooldown_fraction, cfg.min_lr_ratio))
    return min(max(factor, 0.0), 1.0)


def muon_momentum(step: int, cfg: OptimArgs) -> float:
    """Linear warmup of Muon's momentum from `muon_momentum_warmup_start` to `muon_momentum` (optimizer steps)."""
    if cfg.muon_momentum_warmup_steps <= 0:
        return cfg.muon_momentum
    frac = min(step / cfg.muon_momentum_warmup_steps, 1.0)
    return (1 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum


def muon_weight_decay(progress: float, cfg: OptimArgs) -> float:
    """Muon weight decay, linear from `muon_weight_decay` to 0 over the run."""
    return cfg.muon_weight_decay * (1.0 - min(max(progress, 0.0), 1.0))
