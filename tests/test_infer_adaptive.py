"""Adaptive depth: τ = 0 is fixed depth exactly; per-row budgets equal fixed-depth decoding; the KV copy
rule for exited tokens; stepwise bpb equals the parallel forward; bad input is rejected clearly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import parcae_lm
from parcae_lm.errors import ConfigError
from parcae_lm.infer.adaptive import AdaptiveDecoder, ExitCriterion, ExitRule, adaptive_generate
from parcae_lm.infer.quality import stepwise_bpb
from parcae_lm.model import CacheStrategy, Decoder


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return parcae_lm.create_model("parcae-micro", init_strategy="scaled").eval()


@torch.no_grad()
@pytest.mark.parametrize("criterion", list(ExitCriterion))
def test_threshold_zero_is_fixed_depth_exactly(model, criterion):
    x = torch.randint(0, 97, (3, 10))
    R = model.config.mean_recurrence
    rule = ExitRule(criterion, max_steps=R) if criterion == ExitCriterion.BUDGET else ExitRule(criterion, 0.0)
    dec, eng = AdaptiveDecoder(model, 3, 10, rule), Decoder(model, 3, 10)
    got = torch.stack([dec.step(x[:, i]) for i in range(10)], 1)
    want = torch.stack([eng.step(x[:, i]) for i in range(10)], 1)
    if criterion == ExitCriterion.KL:  # the KL path returns its probes' log-probabilities
        want = want.log_softmax(-1)
    assert torch.equal(got, want)
    assert dec.stats.mean_iterations == R and dec.stats.histogram == {R: 30}
    ref = model(x)["logits"]
    ref = ref.log_softmax(-1) if criterion == ExitCriterion.KL else ref
    assert (got - ref).abs().max() < 1e-4


@torch.no_grad()
def test_per_row_budgets_equal_fixed_depth_decoding(model):
    """A row whose every token runs d iterations decodes exactly like a depth-d model: iterations ≥ d of
    its cache (filled by the copy rule) are never read by a depth-d query."""
    x = torch.randint(0, 97, (3, 12))
    budgets = torch.tensor([1, 2, 3])
    dec = AdaptiveDecoder(model, 3, 12, ExitRule(ExitCriterion.BUDGET, max_steps=3))
    got = torch.stack([dec.step(x[:, i], budgets) for i in range(12)], 1)
    for row, d in enumerate(budgets.tolist()):
        eng = Decoder(model, 1, 12, num_steps=d)
        want = torch.stack([eng.step(x[row : row + 1, i]) for i in range(12)], 1)
        assert (got[row] - want[0]).abs().max() < 1e-5
    assert dec.stats.histogram == {1: 12, 2: 12, 3: 12}


@torch.no_grad()
def test_exited_tokens_present_their_last_computed_kv(model):
    x = torch.randint(0, 97, (2, 6))
    dec = AdaptiveDecoder(model, 2, 6, ExitRule(ExitCriterion.BUDGET, max_steps=3))
    for i in range(6):
        dec.step(x[:, i], torch.tensor([1, 3]))
    cache = dec.cache
    for layer in range(model.config.n_layers_in_recurrent_block):
        first = cache.core_layer(0, layer)
        for r in (1, 2):
            later = cache.core_layer(r, layer)
            assert torch.equal(later.k[0, :, :6], first.k[0, :, :6])  # row 0 exited after 1: copies
            assert torch.equal(later.v[0, :, :6], first.v[0, :, :6])
            assert not torch.equal(later.k[1, :, :6], first.k[1, :, :6])  # row 1 computed its own


@torch.no_grad()
def test_state_threshold_trades_iterations_for_quality(model):
    x = torch.randint(0, 97, (2, 12))
    depths = []
    for tau in (0.0, 0.5, 1.0):
        dec = AdaptiveDecoder(model, 2, 12, ExitRule(ExitCriterion.STATE, tau))
        for i in range(12):
            dec.step(x[:, i])
        depths.append(dec.stats.mean_iterations)
    assert depths[0] == model.config.mean_recurrence
    assert depths[0] >= depths[1] >= depths[2]
    out, stats = adaptive_generate(model, x[:, :4], 6, ExitRule(ExitCriterion.KL, 1e-3))
    assert out.shape == (2, 10) and int(out.max()) < model.config.vocab_size and stats.tokens == 10


@torch.no_grad()
def test_stepwise_bpb_equals_parallel_forward(model):
    torch.manual_seed(1)
    x = torch.randint(0, 97, (2, 12))
    y = torch.randint(0, 97, (2, 12))
    y[1, -3:] = -100  # padding targets are ignored
    token_bytes = torch.randint(1, 4, (model.config.padded_vocab_size,))
    token_bytes[0] = 0  # a special token: not scored
    logits = model(x)["logits"][..., : model.config.vocab_size]
    nll = F.cross_entropy(logits.transpose(1, 2), y.clamp(min=0), reduction="none")
    nb = torch.where(y != -100, token_bytes[y.clamp(min=0)], 0)
    want = float((nll * (nb > 0)).sum()) / (math.log(2) * int(nb.sum()))
    for strategy in ("full", "last"):
        r = stepwise_bpb(model, [(x, y)], token_bytes, strategy=CacheStrategy.parse(strategy))
        if strategy == "full":
            assert r.bits_per_byte == pytest.approx(want, rel=1e-5)
            assert r.mean_iterations == model.config.mean_recurrence
        else:  # a shared-slot cache is an approximation: close, not equal, on a model with live attention
            assert r.bits_per_byte != pytest.approx(want, rel=1e-7)


def test_bad_rules_are_rejected(model):
    with pytest.raises(ConfigError, match="≥ 0"):
        ExitRule(ExitCriterion.STATE, -0.1)
    with pytest.raises(ConfigError, match="finite"):
        ExitRule(ExitCriterion.KL, float("nan"))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        ExitRule(ExitCriterion.STATE, 2.0)
    with pytest.raises(ConfigError, match="no threshold"):
        ExitRule(ExitCriterion.BUDGET, 0.5)
    with pytest.raises(ConfigError, match="min_steps"):
        ExitRule(ExitCriterion.STATE, 0.1, max_steps=2, min_steps=3)
    with pytest.raises(ConfigError, match="max_steps"):
        ExitRule(ExitCriterion.STATE, 0.1, max_steps=0)
    with pytest.raises(ConfigError, match="looped"):
        AdaptiveDecoder(parcae_lm.create_model("gpt-micro").eval(), 1, 8, ExitRule())
    dec = AdaptiveDecoder(model, 2, 8, ExitRule(ExitCriterion.BUDGET, max_steps=2))
    with pytest.raises(ConfigError, match="budget"):
        dec.step(torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))


def test_cli_rejects_bad_thresholds_before_loading(capsys):
    from parcae_lm.cli import main

    args = ["infer", "adaptive-eval", "/nonexistent", "--criterion", "state", "--thresholds"]
    assert main([*args, "[0.1,-1]"]) == 1
    assert "≥ 0" in capsys.readouterr().err
    assert main([*args, "[0.1,abc]"]) == 2  # not a number: a usage error
    assert "--thresholds: expected" in capsys.readouterr().err
    assert main(["infer", "cache-eval", "/nonexistent", "--strategies", "[full,middle]"]) == 1
    assert "unknown cache strategy" in capsys.readouterr().err
