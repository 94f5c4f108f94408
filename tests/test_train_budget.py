"""The budget rule: steps given, or from tokens, FLOPs or a tokens:param ratio; or seconds of wall clock."""

from __future__ import annotations

import pytest

from parcae_lm.config.train import load_run_config
from parcae_lm.errors import ConfigError
from parcae_lm.train.budget import FINAL_RESERVE_MARGIN_S, Budget, max_steps, training_seconds


def tiny(**budget):
    # tiny: 16 sequences x 256 tokens = 4,096 tokens per step
    return load_run_config("tiny", {f"train.{k}": v for k, v in budget.items()})


def test_every_budget_kind_gives_whole_steps():
    assert tiny().tokens_per_step == 4096
    assert max_steps(tiny(max_steps=7), flops_per_token=1.0, n_params=1) == 7
    assert max_steps(tiny(max_tokens=4096 * 10 + 4095), flops_per_token=1.0, n_params=1) == 10  # rounded down
    assert max_steps(tiny(max_flops=3e6 * 4096 * 5), flops_per_token=3e6, n_params=1) == 5
    assert max_steps(tiny(token_to_param_ratio=20.0), flops_per_token=1.0, n_params=4096) == 20
    assert max_steps(tiny(), flops_per_token=1.0, n_params=1) is None  # tiny's own budget: 9 minutes
    with pytest.raises(ConfigError, match="less than one step of 4096 tokens"):
        max_steps(tiny(max_tokens=4000.0), flops_per_token=1.0, n_params=1)


def test_time_budget_keeps_the_final_evaluation_and_a_margin():
    assert (
        training_seconds(9.0, elapsed=20.0, final_eval_seconds=30.0) == 540 - 20 - 30 - FINAL_RESERVE_MARGIN_S
    )
    with pytest.raises(ConfigError, match=r"train.max_time_minutes=0.5 leaves no time to train.*25s"):
        training_seconds(0.5, elapsed=20.0, final_eval_seconds=15.0)


def test_step_budget_progress_and_end():
    b = Budget(max_steps=4, train_seconds=None)
    assert [b.progress(s, 123.0) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert b.step_fraction(99.0) == 0.25
    assert [b.done(s, 0.0) for s in range(5)] == [False, False, False, False, True]


def test_time_budget_never_starts_a_step_that_would_end_late():
    b = Budget(max_steps=None, train_seconds=100.0)
    assert b.progress(3, 25.0) == 0.25 and b.step_fraction(10.0) == 0.1
    assert not b.done(50, 89.0, last_step_seconds=10.0)
    assert b.done(50, 91.0, last_step_seconds=10.0)  # 91 + 10 > 100: stop before the next step
    assert b.done(0, 100.5)
