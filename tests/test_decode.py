"""The fast inference engine computes the model's function; `parcae bench generate` reports sane numbers."""

from __future__ import annotations

import json

import pytest
import torch

import parcae_lm
from parcae_lm.cli import main
from parcae_lm.errors import ConfigError
from parcae_lm.infer.bench import bench_generate, parse_batch_sizes
from parcae_lm.infer.engine import Engine, fast_generate
from parcae_lm.infer.export import quantize_int8
from parcae_lm.infer.kv_cache import CacheStrategy


@pytest.fixture(scope="module", params=["parcae-micro", "gpt-micro"])
def model(request):
    torch.manual_seed(0)
    return parcae_lm.create_model(request.param, init_strategy="scaled").eval()


# The static decode step on the two micro models and on configurations that exercise its other branches:
# grouped-query attention, a logit softcap, a core of another width and head size, the linear and
# additive injections, normal and zero h₀.
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


@pytest.fixture(scope="module", params=list(STATIC_CONFIGS))
def static_model(request):
    name, overrides = STATIC_CONFIGS[request.param]
    torch.manual_seed(0)
    return parcae_lm.create_model(name, init_strategy="scaled", **overrides).eval()


@torch.no_grad()
def test_engine_matches_forward_in_chunks_and_steps(model):
    x = torch.randint(0, 97, (3, 20))
    for num_steps in [None, 1, 5] if model.config.is_parcae else [None]:
        kw = {} if num_steps is None else {"num_steps": num_steps}
        full = model(x, **kw)["logits"]
        eng = Engine(model, 3, 20, num_steps)
        first = eng.prefill(x[:, :8])  # last position only
        chunk = eng.logits(eng.hidden(x[:, 8:12]))  # a multi-token chunk at an offset
        steps = torch.stack([eng.step(x[:, i]) for i in range(12, 20)], 1)
        assert (first - full[:, 7]).abs().max() < 1e-5
        assert (chunk - full[:, 8:12]).abs().max() < 1e-5
        assert (steps - full[:, 12:]).abs().max() < 1e-5
        with pytest.raises(ValueError, match="overflow"):
            eng.step(x[:, 0])


@torch.no_grad()
def test_fast_generate_equals_model_generate(model):
    x = torch.randint(0, 97, (2, 5))
    assert torch.equal(fast_generate(model, x, 12), model.generate(x, 12, temperature=0))


@torch.no_grad()
def test_static_decode_step_matches_engine_uncompiled(static_model, monkeypatch):
    """The static-shape step (tensor position, full-buffer masked attention, gathered RoPE and h₀) run
    eagerly: the logic the compiled path traces, checked without a C++ compiler."""
    model = static_model
    x = torch.randint(0, 97, (3, 16))
    full = model(x)["logits"]
    eng, ref = Engine(model, 3, 16, compiled=True), Engine(model, 3, 16)
    monkeypatch.setattr(eng.static, "compiled", eng.static.forward)
    for _ in range(2):  # a second sequence in the same buffers, after reset
        eng.reset()
        ref.reset()
        assert (eng.prefill(x[:, :6]) - ref.prefill(x[:, :6])).abs().max() < 1e-5
        for i in range(6, 16):
            got = eng.step(x[:, i])
            assert (got - ref.step(x[:, i])).abs().max() < 1e-5
            assert (got - full[:, i]).abs().max() < 1e-4
            assert eng.pos == i + 1
    with pytest.raises(ValueError, match="overflow"):
        eng.step(x[:, 0])


def test_static_decode_rejects_what_it_does_not_support():
    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro").eval()
    with pytest.raises(ConfigError, match="cache strategy"):
        Engine(model, 1, 8, strategy=CacheStrategy.parse("last"), compiled=True)
    with pytest.raises(ConfigError, match="quantized"):
        Engine(quantize_int8(model), 1, 8, compiled=True)
    with pytest.raises(ValueError, match="compiled=True"):
        Engine(model, 1, 8).precompile()


@pytest.mark.slow
@torch.no_grad()
def test_compiled_decode_matches_eager_and_forward(static_model):
    """Inductor-compiled step: same logits as the eager engine and the uncached forward, one graph for all
    positions (no recompiles), and greedy outputs identical to the model's."""
    from torch._dynamo.utils import counters

    model = static_model
    x = torch.randint(0, 97, (2, 24))
    full = model(x)["logits"]
    eng, ref = Engine(model, 2, 24, compiled=True), Engine(model, 2, 24)
    assert eng.precompile() > 0
    graphs = counters["stats"]["unique_graphs"]
    eng.prefill(x[:, :8])
    ref.prefill(x[:, :8])
    for i in range(8, 24):
        got = eng.step(x[:, i])
        assert (got - ref.step(x[:, i])).abs().max() < 1e-4
        assert (got - full[:, i]).abs().max() < 1e-4
    assert counters["stats"]["unique_graphs"] == graphs
    y = torch.randint(0, 97, (2, 5))
    assert torch.equal(fast_generate(model, y, 12, compiled=True), model.generate(y, 12, temperature=0))
    assert torch.equal(
        model.generate(y, 12, temperature=0, compiled=True), model.generate(y, 12, temperature=0)
    )


def test_engine_rejects_training_mode():
    model = parcae_lm.create_model("parcae-micro").train()
    with pytest.raises(ValueError, match="eval mode"):
        Engine(model, 1, 8)


def test_bench_generate_numbers(model):
    r = bench_generate(model, prompt_len=8, new_tokens=6, batch_size=2, peak_flops=1e10, eager_tokens=3)
    assert r.decode_tokens_per_second > 0 and r.prefill_tokens_per_second > 0
    slots = len(Engine(model, 2, 14).cache.slots)
    assert (
        r.kv_cache_bytes == slots * 2 * 2 * 14 * model.config.head_size * model.config.num_key_value_heads * 4
    )
    assert r.flop_limited_tokens_per_second == pytest.approx(1e10 / r.flops_per_token)
    assert r.fraction_of_flop_limit == pytest.approx(
        r.decode_tokens_per_second / r.flop_limited_tokens_per_second
    )
    assert not r.compiled and r.compile_seconds is None
    with pytest.raises(ConfigError, match="block_size"):
        bench_generate(model, prompt_len=60, new_tokens=10)
    if model.config.is_parcae:  # (GPT rejects shared-slot strategies outright)
        ring = CacheStrategy.parse("ring-2")
        with pytest.raises(ConfigError, match="compiled decode step"):
            bench_generate(model, prompt_len=8, new_tokens=4, strategy=ring, compile=True)


def test_bench_generate_cli(tmp_path, capsys):
    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro").eval()
    parcae_lm.save_pretrained(model, tmp_path / "m")
    out = tmp_path / "bench.json"
    args = ["bench", "generate", str(tmp_path / "m"), "--prompt-len", "8", "--new-tokens", "4"]
    assert main([*args, "--batch-sizes", "1,2", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["batch_size"] for r in rows] == [1, 2] and all(r["threads"] == 1 for r in rows)
    assert "of limit" in capsys.readouterr().out
    assert main([*args, "--batch-sizes", "1,x"]) == 1
    assert "--batch-sizes" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        parse_batch_sizes("0")


@pytest.mark.slow
def test_bench_generate_cli_compiled(tmp_path, capsys):
    torch.manual_seed(0)
    parcae_lm.save_pretrained(parcae_lm.create_model("parcae-micro").eval(), tmp_path / "m")
    out = tmp_path / "bench.json"
    args = ["bench", "generate", str(tmp_path / "m"), "--prompt-len", "8", "--new-tokens", "4"]
    assert main([*args, "--batch-sizes", "1", "--compile", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["compiled"] and row["compile_seconds"] > 0 and row["decode_tokens_per_second"] > 0
    assert "decode step compiled in" in capsys.readouterr().out
