"""How long a run trains, and how far along it is.

The number of optimizer steps is either given (`train.max_steps`), or comes from target tokens
(`train.max_tokens`), target FLOPs (`train.max_flops` / model FLOPs per token) or a tokens:parameters
ratio (`train.token_to_param_ratio` x parameters), each rounded down to whole steps of
`global_batch_size x seq_len` tokens. A wall-clock budget (`train.max_time_minutes`) instead counts
seconds: what is left of the minutes after setup and a reserve for the final evaluation and saving.
Schedules run on `progress` in [0, 1], the fraction of the budget (steps or seconds) used so far, so a
time-limited run cools down exactly when its time ends, however fast the machine is.
"""

from __future__ import annotations

from dataclasses import dataclass

from parcae_lm.config.train import RunConfig
from parcae_lm.errors import ConfigError

FINAL_RESERVE_MARGIN_S = 10.0  # seconds kept free in a time budget for saving, samples, plots


def max_steps(cfg: RunConfig, flops_per_token: float, n_params: int) -> int | None:
    """Optimizer steps of a step, token, FLOP or ratio budget; None for a wall-clock budget."""
    t = cfg.train
    if t.max_time_minutes is not None:
        return None
    if t.max_steps is not None:
        return t.max_steps
    if t.max_tokens is not None:
        tokens = t.max_tokens
    elif t.max_flops is not None:
        tokens = t.max_flops / flops_per_token
    else:
        tokens = t.token_to_param_ratio * n_params
    steps = int(tokens // cfg.tokens_per_step)
    if steps < 1:
        raise ConfigError(
            f"the budget gives {tokens:.3g} tokens, less than one step of {cfg.tokens_per_step} tokens"
        )
    return steps


def training_seconds(max_time_minutes: float, elapsed: float, final_eval_seconds: float) -> float:
    """Seconds of a wall-clock budget left for training after `elapsed` seconds of setup, keeping time for
    the final evaluation (`final_eval_seconds`, an estimate) and a margin for saving."""
    reserve = final_eval_seconds + FINAL_RESERVE_MARGIN_S
    seconds = max_time_minutes * 60.0 - elapsed - reserve
    if seconds <= 0:
        raise ConfigError(
            f"train.max_time_minutes={max_time_minutes} leaves no time to train: setup and data preparation "
            f"took {elapsed:.0f}s and the final evaluation needs about {reserve:.0f}s"
        )
    return seconds


@dataclass(frozen=True)
class Budget:
    """Exactly one of: a number of optimizer steps, or seconds of training (the time budget)."""

    max_steps: int | None
    train_seconds: float | None

    def progress(self, step: int, train_elapsed: float) -> float:
        if self.max_steps is not None:
            return step / self.max_steps
        return train_elapsed / self.train_seconds

    def step_fraction(self, last_step_seconds: float) -> float:
        """One step's share of the budget (the LR warmup counts a step at its end)."""
        if self.max_steps is not None:
            return 1.0 / self.max_steps
        return last_step_seconds / self.train_seconds

    def done(self, step: int, train_elapsed: float, last_step_seconds: float = 0.0) -> bool:
        if self.max_steps is not None:
            return step >= self.max_steps
        # Do not start a step that would end past the budget.
        return train_elapsed + last_step_seconds > self.train_seconds
