"""Shared-slot KV caches: memory independent of depth, and each strategy equals its documented
approximation, computed here directly with the full cache and explicit copies."""

from __future__ import annotations

import pytest
import torch

import parcae_lm
from parcae_lm.errors import ConfigError
from parcae_lm.model import CacheStrategy, Decoder
from parcae_lm.model.kv_cache import CacheKind


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return parcae_lm.create_model("parcae-micro", init_strategy="scaled", mean_recurrence=4).eval()


def test_strategy_parsing_and_slots():
    assert CacheStrategy.parse("ring-3") == CacheStrategy(CacheKind.RING, 3)
    assert str(CacheStrategy.parse("first-last")) == "first-last"
    assert [CacheStrategy.parse("ring-2").slot_of(r, 4) for r in range(4)] == [0, 1, 0, 1]
    assert [CacheStrategy.parse("first-last").slot_of(r, 4) for r in range(4)] == [0, 1, 1, 1]
    for bad in ("ring-0", "ring-x", "middle"):
        with pytest.raises(ConfigError):
            CacheStrategy.parse(bad)
    with pytest.raises(ValueError, match="beyond"):
        CacheStrategy().slot_of(4, 4)


def test_shared_cache_memory_does_not_grow_with_depth(model):
    cfg = model.config
    per_layer = model.new_kv_cache(2, 32, num_steps=1).memory_bytes() // (
        cfg.n_layers_in_prelude + cfg.n_layers_in_recurrent_block + cfg.n_layers_in_coda
    )
    for steps in (2, 8, 16):
        full = model.new_kv_cache(2, 32, num_steps=steps)
        last = model.new_kv_cache(2, 32, num_steps=steps, strategy=CacheStrategy.parse("last"))
        assert full.memory_bytes() == per_layer * (2 + steps * 2)
        assert last.memory_bytes() == per_layer * (2 + 2)
    with pytest.raises(ConfigError, match="GPT"):
        parcae_lm.create_model("gpt-micro").new_kv_cache(1, 8, strategy=CacheStrategy.parse("last"))


def _reference(model, x, source_of):
    """Token-by-token decoding with the *full* cache and the model's own forward; after each token, the
    slot of iteration r at that position is overwritten with iteration source_of(r)'s K/V — what a shared
    slot holds once the token is done. Later tokens then read exactly what the shared cache would hold."""
    B, T = x.shape
    R = model.config.mean_recurrence
    cache = model.new_kv_cache(B, T)
    out = []
    for t in range(T):
        out.append(model(x[:, t : t + 1], kv_cache=cache, input_pos=torch.tensor([t]))["logits"][:, 0])
        for layer in range(model.config.n_layers_in_recurrent_block):
            src = {r: cache.core_layer(source_of(r), layer) for r in range(R)}
            ks = {r: s.k[:, :, t].clone() for r, s in src.items()}
            vs = {r: s.v[:, :, t].clone() for r, s in src.items()}
            for r in range(R):
                cache.core_layer(r, layer).k[:, :, t] = ks[r]
                cache.core_layer(r, layer).v[:, :, t] = vs[r]
    return torch.stack(out, 1)


@torch.no_grad()
@pytest.mark.parametrize(
    "strategy, source_of",
    [
        ("last", lambda r: 3),  # every iteration sees earlier tokens' final iteration
        ("first-last", lambda r: 0 if r == 0 else 3),
        ("ring-2", lambda r: 2 + r % 2),  # slot r mod 2 ends up holding iteration 2 or 3
    ],
)
def test_shared_cache_equals_documented_approximation(model, strategy, source_of):
    x = torch.randint(0, 97, (2, 10))
    want = _reference(model, x, source_of)
    dec = Decoder(model, 2, 10, strategy=CacheStrategy.parse(strategy))
    got = torch.stack([dec.step(x[:, t]) for t in range(10)], 1)
    assert (got - want).abs().max() < 1e-5
    # ... and it is a real approximation: it differs from the exact full-cache decoding.
    exact = model(x)["logits"]
    assert (got - exact).abs().max() > 1e-4
