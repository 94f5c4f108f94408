"""Weight-only int8 through torchao: close to fp32, about a quarter of the weight bytes, the same decoding
paths (cached, generate, the compiled step), bpb within 1%; int4 refused off CUDA; bad input errors."""

from __future__ import annotations

import pytest
import torch

import parcae_lm
from parcae_lm.errors import ConfigError
from parcae_lm.infer.quality import stepwise_bpb

pytest.importorskip("torchao")

from parcae_lm.infer.quantize import QuantizedEmbedding, quantize, weight_bytes  # noqa: E402


@pytest.fixture(scope="module", params=["parcae-micro", "gpt-micro"])
def model(request):
    torch.manual_seed(0)
    return parcae_lm.create_model(request.param, init_strategy="scaled").eval()


@torch.no_grad()
def test_int8_close_smaller_and_decoder_compatible(model):
    q = quantize(model)
    assert (
        type(model.lm_head.weight) is torch.nn.Parameter and type(model.transformer.wte) is torch.nn.Embedding
    )
    assert isinstance(q.transformer.wte, QuantizedEmbedding)  # the tied table stays one int8 matrix
    x = torch.randint(0, 97, (2, 12))
    ref, got = model(x)["logits"], q(x)["logits"]
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    # Quantised matrices are a quarter of fp32 (plus row scales); norms and value embeddings stay.
    assert weight_bytes(q) < 0.6 * weight_bytes(model)
    # Exactly: each matrix's 4 bytes per entry become 1, plus a 4-byte scale and a 1-byte zero point per row; the tied head and
    # the token table are one matrix, counted once.
    linears = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}.values()
    saved = sum(3 * w.numel() - 5 * w.shape[0] for w in linears)
    assert weight_bytes(q) == weight_bytes(model) - saved
    # Cached decoding runs the same quantised weights: chunked and one-token steps equal the parallel forward.
    cache = q.new_kv_cache(2, 12)
    parts = [q(x[:, :5], kv_cache=cache, input_pos=torch.arange(5))["logits"]]
    parts += [q(x[:, i : i + 1], kv_cache=cache, input_pos=torch.tensor([i]))["logits"] for i in range(5, 12)]
    assert (torch.cat(parts, 1) - got).abs().max() < 1e-4
    out = q.generate(x[:, :4], 6, temperature=0)
    assert torch.equal(out[:, 4:], q(out)["logits"][:, 3:-1, :97].argmax(-1))
    if model.config.is_parcae:  # scored token by token through the cache (stepwise_bpb is Parcae's)
        y = torch.randint(0, 97, (2, 12))
        tb = torch.ones(model.config.padded_vocab_size, dtype=torch.long)
        b32, b8 = (stepwise_bpb(m, [(x, y)], tb).bits_per_byte for m in (model, q))
        assert abs(b8 - b32) < 0.01 * b32


def test_quantize_rejects_what_it_cannot_do(model):
    with pytest.raises(ConfigError, match="bits"):
        quantize(model, bits=3)
    with pytest.raises(ConfigError, match="CUDA"):
        quantize(model, bits=4)
    with torch.device("meta"):
        meta = parcae_lm.create_model("parcae-micro").eval()
    with pytest.raises(ConfigError, match="meta"):
        quantize(meta)


@pytest.mark.slow
@torch.no_grad()
def test_int8_compiled_decode_matches_eager(model):
    q = quantize(model)
    x = torch.randint(0, 97, (2, 5))
    assert torch.equal(q.generate(x, 8, temperature=0, compiled=True), q.generate(x, 8, temperature=0))


def test_infer_quantize_command_measures_each_variant_in_its_own_process(tmp_path, capsys):
    import json

    from parcae_lm.cli import main
    from parcae_lm.tokenizer import Tokenizer
    from verse import verse_shards

    tok_dir, shards = verse_shards(tmp_path / "data", train_docs=4, val_lines=200, vocab_size=300)
    tok = Tokenizer.load(tok_dir)
    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro", vocab_size=tok.vocab_size, init_strategy="scaled")
    parcae_lm.save_pretrained(model, tmp_path / "run")
    tok.save(tmp_path / "run" / "tokenizer")
    out = tmp_path / "q.json"
    args = ["infer", "quantize", str(tmp_path / "run"), "--shard_dir", str(shards), "--seq_len", "32"]
    args += [
        "--batch_size",
        "2",
        "--batches",
        "2",
        "--new_tokens",
        "8",
        "--compile",
        "false",
        "--device",
        "cpu",
    ]
    assert main([*args, "--out", str(out)]) == 0
    fp32, int8 = json.loads(out.read_text())
    assert (fp32["variant"], int8["variant"]) == ("fp32", "int8")
    assert int8["weight_bytes"] < 0.6 * fp32["weight_bytes"]
    assert abs(int8["bits_per_byte"] - fp32["bits_per_byte"]) < 0.01 * fp32["bits_per_byte"]
    assert fp32["peak_rss_mb"] > 0 and int8["decode_tokens_per_second"] > 0
    assert int8["compiled_decode_tokens_per_second"] is None
    assert "int8" in capsys.readouterr().out
    assert main([*args, "--variants", "[int4]"]) == 1  # no int4 kernels off CUDA: one line, exit 1
    assert "CUDA" in capsys.readouterr().err
