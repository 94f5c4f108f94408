"""Cached decoding through the model's own forward (eager and one compiled static-shape step) computes the
model's function; `parcae bench generate` reports sane numbers."""

from __future__ import annotations

import json

import pytest
import torch

import parcae_lm
from parcae_lm.bench.generate import bench_generate
from parcae_lm.cli import main
from parcae_lm.errors import ConfigError
from parcae_lm.model import CacheStrategy, Decoder


@pytest.fixture(scope="module", params=["parcae-micro", "gpt-micro"])
def model(request):
    torch.manual_seed(0)
    return parcae_lm.create_model(request.param, init_strategy="scaled").eval()


# The static decode step on the two micro models and on configurations that exercise its other branches:
# grouped-query attention, a logit softcap, a core of another width and head size, the linear and
# additive injections, normal and zero h₀, a shared-slot cache.
STATIC_CONFIGS = {
    "parcae-micro": ("parcae-micro", {}),
    "gpt-micro": ("gpt-micro", {}),
    "parcae-gqa-linear": (
        "parcae-micro",
        dict(
            num_key_value_heads=1,
            recurrent_embedding_dimension=128,
            recurrent_num_attention_heads=2,
            recurrent_num_key_value_heads=1,
            logit_softcap=30.0,
            injection_type="linear",
            state_init="normal",
        ),
    ),
    "parcae-additive-zero": ("parcae-micro", dict(injection_type="add", state_init="zero")),
}
STRATEGY = {"parcae-additive-zero": CacheStrategy.parse("ring-2")}


@pytest.fixture(scope="module", params=list(STATIC_CONFIGS))
def static_model(request):
    name, overrides = STATIC_CONFIGS[request.param]
    torch.manual_seed(0)
    model = parcae_lm.create_model(name, init_strategy="scaled", **overrides).eval()
    return model, STRATEGY.get(request.param, CacheStrategy())


@torch.no_grad()
def test_decoder_matches_forward_in_chunks_and_steps(model):
    x = torch.randint(0, 97, (3, 20))
    for num_steps in [None, 1, 5] if model.config.is_parcae else [None]:
        kw = {} if num_steps is None else {"num_steps": num_steps}
        full = model(x, **kw)["logits"]
        dec = Decoder(model, 3, 20, num_steps)
        first = dec.prefill(x[:, :8])  # last position only
        chunk = dec.prefill(x[:, 8:12])  # a multi-token chunk at an offset
        steps = torch.stack([dec.step(x[:, i]) for i in range(12, 20)], 1)
        assert (first - full[:, 7]).abs().max() < 1e-5
        assert (chunk - full[:, 11]).abs().max() < 1e-5
        assert (steps - full[:, 12:]).abs().max() < 1e-5
        with pytest.raises(ValueError, match="overflow"):
            dec.step(x[:, 0])


@torch.no_grad()
def test_whole_buffer_and_per_row_positions_match_the_forward(model):
    """The two other cache modes of the forward: attention over the whole masked buffer (what the compiled
    step runs), and per-row positions [B, T] — here rows at different offsets in one batch."""
    x = torch.randint(0, 97, (2, 12))
    full = model(x)["logits"]
    cache = model.new_kv_cache(2, 16)
    parts = [
        model(x[:, a:b], kv_cache=cache, input_pos=torch.arange(a, b))["logits"]
        for a, b in ((0, 5), (5, 6), (6, 12))
    ]
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5
    # Row 1 runs one position behind row 0 (its first token is written twice, the same both times).
    cache = model.new_kv_cache(2, 16)
    for t in range(12):
        pos = torch.tensor([[t], [max(t - 1, 0)]])
        logits = model(x.gather(1, pos), kv_cache=cache, input_pos=pos)["logits"][:, 0]
        assert (logits[0] - full[0, t]).abs().max() < 1e-5
        assert (logits[1] - full[1, max(t - 1, 0)]).abs().max() < 1e-5


@torch.no_grad()
def test_greedy_decoding_is_the_model_generate(model):
    x = torch.randint(0, 97, (2, 5))
    out = model.generate(x, 12, temperature=0)
    logits = model(out)["logits"]
    assert torch.equal(logits[:, 4:-1, : model.config.vocab_size].argmax(-1), out[:, 5:])


@torch.no_grad()
def test_static_decode_step_matches_eager_uncompiled(static_model, monkeypatch):
    """The compiled step's function (tensor position, whole-buffer masked attention, gathered RoPE and
    h₀) run eagerly: the logic the compiled path traces, checked without a C++ compiler."""
    model, strategy = static_model
    x = torch.randint(0, 97, (3, 16))
    full = model(x)["logits"]
    dec, ref = (
        Decoder(model, 3, 16, strategy=strategy, compiled=True),
        Decoder(model, 3, 16, strategy=strategy),
    )
    monkeypatch.setattr(dec, "_compiled", dec._forward_step)
    for _ in range(2):  # a second sequence in the same buffers, after reset
        dec.reset()
        ref.reset()
        assert (dec.prefill(x[:, :6]) - ref.prefill(x[:, :6])).abs().max() < 1e-5
        for i in range(6, 16):
            got = dec.step(x[:, i])
            assert (got - ref.step(x[:, i])).abs().max() < 1e-5
            if strategy == CacheStrategy():
                assert (got - full[:, i]).abs().max() < 1e-4
            assert dec.pos == i + 1
    with pytest.raises(ValueError, match="overflow"):
        dec.step(x[:, 0])


def test_precompile_needs_a_compiled_decoder():
    model = parcae_lm.create_model("parcae-micro").eval()
    with pytest.raises(ValueError, match="compiled=True"):
        Decoder(model, 1, 8).precompile()


@pytest.mark.slow
@torch.no_grad()
def test_compiled_decode_matches_eager_and_forward(static_model):
    """Inductor-compiled step: same logits as the eager decoder and the uncached forward, one graph for all
    positions (no recompiles), and greedy outputs identical to the model's."""
    from torch._dynamo.utils import counters

    model, strategy = static_model
    x = torch.randint(0, 97, (2, 24))
    full = model(x)["logits"]
    dec, ref = (
        Decoder(model, 2, 24, strategy=strategy, compiled=True),
        Decoder(model, 2, 24, strategy=strategy),
    )
    assert dec.precompile() > 0
    graphs = counters["stats"]["unique_graphs"]
    dec.prefill(x[:, :8])
    ref.prefill(x[:, :8])
    for i in range(8, 24):
        got = dec.step(x[:, i])
        assert (got - ref.step(x[:, i])).abs().max() < 1e-4
        if strategy == CacheStrategy():
            assert (got - full[:, i]).abs().max() < 1e-4
    assert counters["stats"]["unique_graphs"] == graphs
    y = torch.randint(0, 97, (2, 5))
    kw = dict(temperature=0, strategy=strategy)
    assert torch.equal(model.generate(y, 12, compiled=True, **kw), model.generate(y, 12, **kw))


def test_decoder_rejects_training_mode():
    model = parcae_lm.create_model("parcae-micro").train()
    with pytest.raises(ValueError, match="eval mode"):
        Decoder(model, 1, 8)


def test_bench_generate_numbers(model):
    r = bench_generate(model, prompt_len=8, new_tokens=6, batch_size=2, peak_flops=1e10, eager_tokens=3)
    assert r.decode_tokens_per_second > 0 and r.prefill_tokens_per_second > 0
    assert 0 < r.end_to_end_tokens_per_second < r.decode_tokens_per_second  # the prefill counts too
    layers = len(model.new_kv_cache(2, 14).layers())
    assert (
        r.kv_cache_bytes
        == layers * 2 * 2 * 14 * model.config.head_size * model.config.num_key_value_heads * 4
    )
    assert r.flop_limited_tokens_per_second == pytest.approx(1e10 / r.flops_per_token)
    assert r.fraction_of_flop_limit == pytest.approx(
        r.decode_tokens_per_second / r.flop_limited_tokens_per_second
    )
    assert not r.compiled and r.compile_seconds is None
    with pytest.raises(ConfigError, match="block_size"):
        bench_generate(model, prompt_len=60, new_tokens=10)


def test_bench_generate_cli(tmp_path, capsys):
    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro").eval()
    parcae_lm.save_pretrained(model, tmp_path / "m")
    out = tmp_path / "bench.json"
    args = ["bench", "generate", str(tmp_path / "m"), "--prompt_len", "8", "--new_tokens", "4"]
    assert main([*args, "--batch_sizes", "[1,2]", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["batch_size"] for r in rows] == [1, 2] and all(r["threads"] == 1 for r in rows)
    assert "of limit" in capsys.readouterr().out
    assert main([*args, "--batch_sizes", "[1,x]"]) == 2  # a usage error
    assert "--batch_sizes" in capsys.readouterr().err
    assert main([*args, "--batch_sizes", "[0]"]) == 1
    assert "--batch_sizes must be positive" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="batch_size"):
        bench_generate(model, prompt_len=8, new_tokens=4, batch_size=0)


@pytest.mark.slow
def test_bench_generate_cli_compiled(tmp_path, capsys):
    torch.manual_seed(0)
    parcae_lm.save_pretrained(parcae_lm.create_model("parcae-micro").eval(), tmp_path / "m")
    out = tmp_path / "bench.json"
    args = ["bench", "generate", str(tmp_path / "m"), "--prompt_len", "8", "--new_tokens", "4"]
    assert main([*args, "--batch_sizes", "[1]", "--compile", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["compiled"] and row["compile_seconds"] > 0 and row["decode_tokens_per_second"] > 0
    assert "decode step compiled in" in capsys.readouterr().out


# -- the user's path: pooled compiled decoders, bucketed lengths, the default policy ---------------------


def test_cache_buckets_and_the_default_compile_policy(monkeypatch):
    from parcae_lm.model import decode as D

    assert [D.cache_length(n, 512) for n in (1, 64, 65, 300, 512)] == [64, 64, 128, 512, 512]
    assert D.cache_length(100, 96) == 96  # never beyond the context
    model = parcae_lm.create_model("parcae-micro").eval()
    monkeypatch.setattr(D, "compile_supported", lambda device: True)
    dec, give_back = D.checkout_decoder(model, 1, 20)
    assert dec._compiled is None and dec.max_len == 20  # a fresh process decodes eagerly, exact length
    give_back()
    monkeypatch.setattr(D, "COMPILE_AFTER_SECONDS", 0.0)  # ... until it has decoded for a while
    dec, give_back = D.checkout_decoder(model, 1, 20)
    assert dec._compiled is not None and dec.max_len == 64
    give_back()
    again, give_back = D.checkout_decoder(model, 1, 50)  # another length in the same bucket: the same one
    assert again is dec and D.compiled_decoders(model) == 0  # lent out
    other, give_other = D.checkout_decoder(model, 1, 30)  # a concurrent caller gets its own
    assert other is not dec
    give_back()
    give_other()
    assert D.compiled_decoders(model) == 1
    eager, _ = D.checkout_decoder(model, 1, 20, compiled=False)
    assert eager._compiled is None


@pytest.mark.slow
@torch.no_grad()
def test_generate_compiles_once_per_bucket_for_any_prompt_or_length():
    """model.generate(compiled=True) over new prompt lengths and max_new_tokens in one bucket: no new graph,
    and the tokens of eager decoding."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro", init_strategy="scaled").eval()
    x = torch.randint(0, 97, (1, 20))
    assert torch.equal(
        model.generate(x[:, :5], 8, temperature=0, compiled=True), model.generate(x[:, :5], 8, temperature=0)
    )
    graphs = counters["stats"]["unique_graphs"]
    for t, n in ((3, 20), (11, 7), (17, 40)):
        got = model.generate(x[:, :t], n, temperature=0, compiled=True)
        assert torch.equal(got, model.generate(x[:, :t], n, temperature=0, compiled=False))
    assert counters["stats"]["unique_graphs"] == graphs


# -- continuous batching ---------------------------------------------------------------------------------


@torch.no_grad()
def test_batch_decoder_rows_at_their_own_positions_and_depths(model):
    """Rows of one batch at different prompt lengths and (Parcae) depths each decode as model.generate at
    their own depth; a finished row's slot is refilled by moving the last row into it."""
    from parcae_lm.model.decode import BatchDecoder

    looped = model.config.is_parcae
    depth = 4 if looped else None
    bd = BatchDecoder(model, rows=4, max_len=40, num_steps=depth)
    prompts = [torch.randint(0, 97, (t,)) for t in (3, 7, 5)]
    depths = [1, 4, 2] if looped else [None] * 3

    def ref(i: int, n: int) -> list[int]:
        kw = {"num_steps": depths[i]} if looped else {}
        return model.generate(prompts[i][None], n, temperature=0, **kw)[0, len(prompts[i]) :].tolist()

    got: list[list[int]] = []
    for row, p in enumerate(prompts):
        got.append([int(bd.prefill(row, p, 0, depths[row])[:97].argmax())])
    steps = torch.tensor([d or 1 for d in depths])
    for _ in range(5):
        pos = torch.tensor([len(p) + len(g) - 1 for p, g in zip(prompts, got)])
        logits, its = bd.step(torch.tensor([g[-1] for g in got]), pos, steps)
        for i in range(3):
            got[i].append(int(logits[i, :97].argmax()))
        if looped:
            assert its.tolist() == depths
    assert got == [ref(i, 6) for i in range(3)]
    # Row 0 finishes; row 2 moves into its slot and goes on there, two rows now.
    bd.move_row(2, 0)
    prompts, got, depths = [prompts[2], prompts[1]], [got[2], got[1]], [depths[2], depths[1]]
    for _ in range(3):
        pos = torch.tensor([len(p) + len(g) - 1 for p, g in zip(prompts, got)])
        logits, _ = bd.step(torch.tensor([g[-1] for g in got]), pos, torch.tensor([d or 1 for d in depths]))
        for i in range(2):
            got[i].append(int(logits[i, :97].argmax()))
    assert got == [ref(i, 9) for i in range(2)]


def test_row_steps_are_checked():
    model = parcae_lm.create_model("parcae-micro").eval()
    x = torch.randint(0, 97, (2, 1))
    with pytest.raises(ValueError, match="kv_cache"):
        model(x, row_steps=torch.tensor([1, 2]))
    cache = model.new_kv_cache(2, 8)
    with pytest.raises(ValueError, match="row_steps has shape"):
        model(x, kv_cache=cache, input_pos=torch.tensor([0]), row_steps=torch.tensor([1]))
    with pytest.raises(ValueError, match="one-token"):
        model(
            torch.randint(0, 97, (2, 3)),
            kv_cache=cache,
            input_pos=torch.arange(3),
            row_steps=torch.tensor([1, 2]),
            exit_threshold=torch.zeros(2),
        )


@torch.no_grad()
def test_indexed_cache_writes_equal_index_copy(model):
    """The write MPS falls back to (indexed assignment where index_copy_ is missing) fills the same cache."""
    x = torch.randint(0, 97, (2, 10))
    caches = [model.new_kv_cache(2, 16), model.new_kv_cache(2, 16)]
    for c in caches[1].layers():
        c.index_copy = False
    outs = [model(x, kv_cache=c, input_pos=torch.arange(10), input_pos_maxp1=10)["logits"] for c in caches]
    assert torch.equal(outs[0], outs[1])
    assert all(
        torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
        for a, b in zip(caches[0].layers(), caches[1].layers())
    )


@pytest.mark.slow
@torch.no_grad()
def test_compiled_batch_decoder_equals_eager():
    """The server's compiled batched step (rows at their own positions, depths and exit thresholds) gives
    the eager step's logits and iteration counts, one graph per batch bucket."""
    from parcae_lm.model.decode import BatchDecoder

    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro", init_strategy="scaled").eval()
    fast, slow = (BatchDecoder(model, 4, 32, num_steps=3, compiled=c) for c in (True, False))
    assert set(fast.precompile([2, 4])) == {2, 4}
    prompts = [torch.randint(0, 97, (t,)) for t in (2, 5, 3)]
    for bd in (fast, slow):
        for row, p in enumerate(prompts):
            bd.prefill(row, p, 0)
    tokens = torch.randint(0, 97, (3,))
    pos = torch.tensor([2, 5, 3])
    for step in range(4):
        kw = dict(steps=torch.tensor([1, 3, 2]), thresholds=torch.tensor([0.0, 0.3, 0.0]))
        (a, ia), (b, ib) = fast.step(tokens, pos + step, **kw), slow.step(tokens, pos + step, **kw)
        assert (a - b).abs().max() < 1e-4 and torch.equal(ia, ib)
        tokens = a[:, :97].argmax(-1)
