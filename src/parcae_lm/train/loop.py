"""The step loop: schedules, optimizer steps, logging, periodic validation and checkpoints, until the
budget is spent.

Periodic evaluation and checkpoints spend the same wall clock as training steps, so a time budget counts
them (the next step's progress sees it) and the whole run still ends on time.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from parcae_lm.config.train import RunConfig
from parcae_lm.data.loader import TokenLoader
from parcae_lm.train.budget import Budget
from parcae_lm.train.checkpoint import Checkpoints, TrainerState
from parcae_lm.train.optim import MuonAdamW, lr_factor, muon_momentum, muon_weight_decay
from parcae_lm.train.step import NonFiniteGuard, Stepper, StepResult
from parcae_lm.train.telemetry import MetricsLogger, ProgressBar, Throughput
from parcae_lm.train.validate import Depths, Validator


def train_loop(
    cfg: RunConfig,
    state: TrainerState,
    budget: Budget,
    stepper: Stepper,
    loader: TokenLoader,
    validator: Validator,
    depths: Depths,
    checkpoints: Checkpoints,
    report: Report,
) -> None:
    """Train from `state` until `budget` is done, updating `state` in place."""
    grad_accum = cfg.grad_accum_steps(stepper.info.world_size)
    guard = NonFiniteGuard(stepper.info.device)
    stepper.model.train()
    data = iter(loader)
    last_step_s = 0.0
    while not budget.done(state.step, state.train_elapsed, last_step_s):
        t0 = time.perf_counter()
        progress = budget.progress(state.step, state.train_elapsed)
        _schedule(stepper.optimizer, cfg, state.step, progress, budget.step_fraction(last_step_s))
        track = (state.step + 1) % cfg.log.interval == 0  # loop diagnostics only on logged steps
        result = stepper([next(data) for _ in range(grad_accum)], state.step, guard, track)
        last_step_s = time.perf_counter() - t0
        state.step += 1
        state.micro_step += grad_accum
        state.tokens += cfg.tokens_per_step
        state.train_elapsed += last_step_s
        report.step(result, cfg.tokens_per_step, last_step_s)

        t_step_end = t0 + last_step_s
        finished = budget.done(state.step, state.train_elapsed, last_step_s)
        if state.step % cfg.log.interval == 0 or finished:
            guard.check(state.step, "training", checkpoints.latest())
            report.train(state, result, progress, stepper)
        if state.step % cfg.eval.interval == 0 and not finished:
            guard.check(state.step, "evaluation", checkpoints.latest())
            report.val(state, validator, stepper.model, depths, cfg.eval.batches)
        if state.step % cfg.checkpoint.interval == 0 or finished:
            stepper.flag_nonfinite_weights(guard)
            guard.check(state.step, "checkpoint", checkpoints.latest())
            checkpoints.save(state, stepper.module, stepper.optimizer.optimizers, loader)
        overhead = time.perf_counter() - t_step_end
        state.train_elapsed += overhead
        report.bar.overhead(overhead)


def _schedule(optimizer: MuonAdamW, cfg: RunConfig, step: int, progress: float, step_fraction: float) -> None:
    optimizer.set_schedule(
        lr_factor(progress, step_fraction, cfg.optim),
        muon_momentum(step, cfg.optim),
        muon_weight_decay(progress, cfg.optim),
    )


class Report:
    """Where the loop's numbers go: the metrics sink (rank 0; None elsewhere), throughput, progress bar."""

    def __init__(self, metrics: MetricsLogger | None, throughput: Throughput, bar: ProgressBar) -> None:
        self.metrics, self.throughput, self.bar = metrics, throughput, bar

    def step(self, result: StepResult, tokens: int, seconds: float) -> None:
        self.throughput.add(result.loss, tokens)
        self.bar.step(seconds)

    def train(self, state: TrainerState, result: StepResult, progress: float, stepper: Stepper) -> None:
        """The training record of the window that ends at this step (a collective)."""
        record: dict[str, Any] = {
            "kind": "train",
            "step": state.step,
            "tokens": state.tokens,
            **self.throughput.record(result.grad_norm),
            "progress": progress,
            "train_s": state.train_elapsed,
            **stepper.optimizer.hyperparameters,
        }
        with torch.no_grad():
            record.update(stepper.module.diagnostics())
        record.update({k: float(v) for k, v in result.loop_stats.items()})
        self._log(record)
        self.bar.show(record)

    def val(
        self, state: TrainerState, validator: Validator, model, depths: Depths, batches: int | None
    ) -> None:
        t = time.perf_counter()
        values = validator(model, depths, max_batches=batches)
        seconds = time.perf_counter() - t
        self._log({"kind": "val", "step": state.step, **values, "eval_s": seconds})
        self.throughput.exclude(seconds)  # keep throughput about training only

    def final(self, state: TrainerState, values: dict[str, float]) -> None:
        """The whole-split evaluation at the end of the run."""
        self._log({"kind": "val", "step": state.step, "final": True, **values})

    def __enter__(self) -> Report:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()

    def _log(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.log(record)
