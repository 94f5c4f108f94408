"""One optimizer step: accumulate this rank's micro-batches, clip, update, and watch for non-finite values.

Nothing here waits on the device: the loss, the gradient norm and the non-finite flag stay device tensors
until the loop logs them, and `NonFiniteGuard.check` (called before logging, evaluating or saving) stops
the run with a TrainingError before anything non-finite is persisted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from parcae_lm.config.train import Precision
from parcae_lm.errors import TrainingError
from parcae_lm.model.recurrence import DepthShard, TrainDraw
from parcae_lm.train.distributed import DistInfo, all_reduce_sum, no_grad_sync, unwrap
from parcae_lm.train.optim import MuonAdamW
from parcae_lm.train.system import autocast_context

Batch = tuple[torch.Tensor, ...]  # (x, y) or (x, y, doc_ids)


@dataclass
class StepResult:
    loss: torch.Tensor  # mean over the step's micro-batches (this rank), on device
    grad_norm: torch.Tensor  # global L2 norm before clipping, on device
    loop_stats: dict[str, torch.Tensor] = field(default_factory=dict)  # state_norm, rel_residual (Parcae)


def accumulate_gradients(
    model: nn.Module,
    batches: list[Batch],
    step: int,
    info: DistInfo,
    precision: Precision,
    track_diagnostics: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward/backward over this rank's micro-batches of one optimizer step; returns the mean loss (on
    device) and, with `track_diagnostics`, the loop's state norm and residual of the last micro-batch.

    Each micro-loss is a mean over its tokens, so the step's gradient is the mean over micro-batches (and
    DDP averages over ranks): with equal-length rows this equals the gradient of one global batch. Depth
    sampling and the initial recurrent state are seeded by (optimizer step, row of the global batch), so
    accumulation and data parallelism also draw the recurrence depths that one big batch would.
    """
    accum = len(batches)
    device = info.device
    step_loss = torch.zeros((), device=device)
    stats: dict[str, torch.Tensor] = {}
    for micro, batch in enumerate(batches):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        doc_ids = batch[2].to(device, non_blocking=True) if len(batch) > 2 else None
        shard = DepthShard(index=micro * info.world_size + info.rank, count=info.world_size * accum)
        last = micro == accum - 1
        diagnostics = track_diagnostics and last
        with no_grad_sync(model, last_micro=last), autocast_context(precision, device):
            out = model(
                x,
                labels=y,
                return_logits=False,
                doc_ids=doc_ids,
                draw=TrainDraw(step, shard),
                diagnostics=diagnostics,
            )
        (out["loss"] / accum).backward()
        step_loss += out["loss"].detach() / accum
        if diagnostics:
            stats = {k: out[k] for k in ("state_norm", "rel_residual") if k in out}
    return step_loss, stats


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` (<= 0: no clipping) and return the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):  # FSDP2: the norm of sharded gradients
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


@dataclass(frozen=True)
class Stepper:
    """Takes optimizer steps of `model` (possibly DDP/FSDP-wrapped) over `params`, its trainable weights."""

    model: nn.Module
    optimizer: MuonAdamW
    params: list[nn.Parameter]
    info: DistInfo
    precision: Precision
    grad_clip: float

    @property
    def module(self) -> nn.Module:
        """The language model itself (inside DDP / torch.compile wrappers; FSDP2 shards it in place)."""
        return unwrap(self.model)

    def __call__(self, batches: list[Batch], step: int, guard: NonFiniteGuard, track: bool) -> StepResult:
        loss, stats = accumulate_gradients(self.model, batches, step, self.info, self.precision, track)
        grad_norm = clip_grad_norm(self.params, self.grad_clip)
        guard.flag(~torch.isfinite(loss) | ~torch.isfinite(grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad()
        return StepResult(loss, grad_norm, stats)

    def flag_nonfinite_weights(self, guard: NonFiniteGuard) -> None:
        """The update itself can produce non-finite weights (checked before saving them)."""
        local = [
            p.to_local() if isinstance(p, DTensor) else p for p in self.params
        ]  # FSDP2: this rank's shard
        guard.flag(~torch.stack([torch.isfinite(p).all() for p in local]).all())


class NonFiniteGuard:
    """A device flag raised by any non-finite loss, gradient norm or weight; checked across ranks."""

    def __init__(self, device: torch.device) -> None:
        self._bad = torch.zeros((), dtype=torch.bool, device=device)

    def flag(self, bad: torch.Tensor) -> None:
        self._bad |= bad

    def check(self, step: int, where: str, last_good: Path | None) -> None:
        """Raise (on every rank) if any rank saw a non-finite value; a collective under torch.distributed."""
        if all_reduce_sum(self._bad.float()).item() > 0:
            raise TrainingError(
                f"non-finite loss, gradient norm or weights at step {step} ({where}); stopping without "
                "saving. "
                + (f"Last good checkpoint: {last_good}" if last_good else "No checkpoint was written.")
                + " Lower the learning rates or check the data."
            )
