"""Generation: cached decoding equals the uncached forward; sampling controls; errors."""

from __future__ import annotations

import pytest
import torch

import parcae_lm
from parcae_lm.model import sample_next


@pytest.fixture(scope="module", params=["parcae-micro", "gpt-micro"])
def model(request):
    torch.manual_seed(0)
    return parcae_lm.create_model(request.param, init_strategy="scaled").eval()


@torch.no_grad()
def test_cached_decoding_matches_uncached_forward(model):
    x = torch.randint(0, 97, (3, 20))
    full = model(x)["logits"]
    steps = [None] if not model.config.is_parcae else [None, 1, 5]
    for num_steps in steps:
        kw = {} if num_steps is None else {"num_steps": num_steps}
        full = model(x, **kw)["logits"]
        cache = model.new_kv_cache(3, 20, num_steps)

        def cached(a: int, b: int, cache=cache) -> torch.Tensor:
            return model(x[:, a:b], kv_cache=cache, input_pos=torch.arange(a, b), input_pos_maxp1=b)["logits"]

        parts = [cached(0, 8), cached(8, 12)]  # a multi-token chunk at an offset
        parts += [cached(i, i + 1) for i in range(12, 20)]
        assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5


@torch.no_grad()
def test_greedy_generation_is_deterministic_and_consistent(model):
    x = torch.randint(0, 97, (2, 6))
    out = model.generate(x, 10, temperature=0)
    assert out.shape == (2, 16) and torch.equal(out[:, :6], x)
    assert torch.equal(out, model.generate(x, 10, temperature=0))
    # Each greedy token is the argmax of the uncached forward on the prefix.
    logits = model(out)["logits"]
    assert torch.equal(logits[:, 5:-1, : model.config.vocab_size].argmax(-1), out[:, 6:])
    # top_k=1 and a tiny top_p are greedy too; a seeded generator makes sampling reproducible.
    assert torch.equal(model.generate(x, 10, top_k=1), out)
    assert torch.equal(model.generate(x, 10, top_p=1e-6), out)
    a = model.generate(x, 10, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = model.generate(x, 10, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_eos_stops_rows():
    model = parcae_lm.create_model("parcae-micro").eval()
    x = torch.randint(0, 97, (2, 4))
    first = model.generate(x, 1, temperature=0)[:, -1]
    out = model.generate(x, 8, temperature=0, eos_id=int(first[0]))
    assert (out[0, 4:] == first[0]).all()


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert draws == {2, 3}
    draws = {int(sample_next(logits, 1.0, top_p=0.7, generator=g)) for _ in range(200)}
    assert draws == {2, 3}  # p(3) = 0.64 < 0.7, so the second token is needed
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, 1.0, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, -1.0)


def test_sampling_draws_from_the_softmax():
    """Each row's draws follow softmax(logits / temperature); tokens of probability 0 are never drawn."""
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, -1e9, 0.0, float("-inf")]])
    g = torch.Generator().manual_seed(0)
    n = 20000
    draws = torch.stack([sample_next(logits, 0.5, generator=g) for _ in range(n)])
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=4).float() / n
        assert (freq - (logits[row] / 0.5).softmax(-1)).abs().max() < 0.01
    assert not draws[:, 1].eq(1).any() and not draws[:, 1].eq(3).any()


def test_too_long_prompt_is_a_clear_error():
    model = parcae_lm.create_model("parcae-micro").eval()
    with pytest.raises(ValueError, match="exceeds the context"):
        model.generate(torch.zeros(1, 60, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="non-empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 10)


def test_cache_memory_is_preallocated_once():
    model = parcae_lm.create_model("parcae-micro").eval()
    cache = model.new_kv_cache(2, 32, num_steps=3)
    cfg = model.config
    n_slots = cfg.n_layers_in_prelude + 3 * cfg.n_layers_in_recurrent_block + cfg.n_layers_in_coda
    assert len(cache.layers()) == n_slots
    ptrs = [c.k.data_ptr() for c in cache.layers()]
    with torch.no_grad():
        model(torch.zeros(2, 5, dtype=torch.long), kv_cache=cache, input_pos=torch.arange(5))
        model(torch.zeros(2, 1, dtype=torch.long), kv_cache=cache, input_pos=torch.tensor([5]))
    assert [c.k.data_ptr() for c in cache.layers()] == ptrs


def test_padding_ids_are_never_sampled():
    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro", init_strategy="scaled").eval()
    assert model.config.padded_vocab_size > model.config.vocab_size
    with torch.no_grad():  # make the padding rows the most likely tokens
        model.lm_head.weight[model.config.vocab_size :] *= 100
    out = model.generate(torch.zeros(4, 3, dtype=torch.long), 20, temperature=1.0)
    assert int(out.max()) < model.config.vocab_size
