"""Any causal LM on the harness: a tiny transformers GPT-2 with its own tokenizers, scored by the same code."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

import parcae_lm
from parcae_lm.errors import EvalError
from parcae_lm.eval.bpb import check_byte_accounting, evaluate_bpb, text_batches
from parcae_lm.eval.bundle import MCExample
from parcae_lm.eval.core import score_rows, task_rows
from parcae_lm.eval.hf_model import HFCausalLM, HFTokenizer, is_hf_model, load_hf_model
from parcae_lm.eval.tasks import TASKS_BY_LABEL

transformers = pytest.importorskip("transformers")

TEXTS = [
    "ROMEO: But soft, what light through yonder window breaks?",
    "Café crème — naïve façade. 日本語。",
    "a\n\nb  c",
]


def byte_level_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXTS * 4, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def sentencepiece_like_tokenizer():
    """Gemma's layout: "▁" for a space, <0xNN> byte fallback for characters outside the vocabulary."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    vocab |= {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece in ["▁", "a", "b", "c", "e", "h", "t", "é", "th", "the", "▁the"]:
        vocab[piece] = len(vocab)
    merges = [("t", "h"), ("th", "e"), ("▁", "the")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=False))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


@pytest.mark.parametrize("make", [byte_level_tokenizer, sentencepiece_like_tokenizer])
def test_token_bytes_add_up_to_the_utf8_length(make):
    tok = HFTokenizer(make())
    texts = [*TEXTS, "the the cat é ü 日"]
    check_byte_accounting(tok, texts)  # raises if any document's token bytes differ from its UTF-8 length
    tb = tok.token_bytes()
    assert tb[tok.bos_id] == 0 and tb[tok.eos_id] == 0
    for text in texts:
        assert tok.decode(tok.encode(text)) == text


def test_byte_fallback_pieces_count_one_byte():
    tok = HFTokenizer(sentencepiece_like_tokenizer())
    ids = tok.encode("日")  # not in the vocabulary: three <0xNN> pieces
    assert len(ids) == 3 and tok.token_bytes()[ids].tolist() == [1, 1, 1]


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    tok = byte_level_tokenizer()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_loaded_model_gives_the_transformers_logits(tiny_gpt2):
    model, tok = load_hf_model(tiny_gpt2)
    assert (
        isinstance(model, HFCausalLM)
        and model.config.block_size == 64
        and model.config.mean_recurrence is None
    )
    assert not model.training and not model.model.training  # GPT-2's dropout is off
    raw = transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    x = torch.tensor([[tok.bos_id, *tok.encode(TEXTS[0])]])
    with torch.no_grad():
        assert torch.equal(model(x)["logits"], raw(x).logits)
    with pytest.raises(EvalError, match="cannot mask documents"):
        model(x, doc_ids=torch.zeros_like(x))
    with pytest.raises(EvalError, match="exceeds the model's context"):
        HFCausalLM(raw, block_size=65)


@torch.no_grad()
def test_bits_per_byte_is_nats_over_the_text_bytes(tiny_gpt2):
    model, tok = load_hf_model(tiny_gpt2)
    (result,) = evaluate_bpb(model, text_batches(tok, TEXTS, seq_len=16, batch_size=2), tok.token_bytes())
    nats = 0.0
    for text in TEXTS:  # by hand: one forward over BOS + the whole document
        ids = torch.tensor([[tok.bos_id, *tok.encode(text)]])
        logp = torch.log_softmax(model.model(ids).logits[0, :-1].double(), -1)
        nats -= float(logp.gather(1, ids[0, 1:, None]).sum())
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    assert result.num_bytes == n_bytes
    # windows of 16 lose context at each cut, so compare with a single-window run too
    (whole,) = evaluate_bpb(model, text_batches(tok, TEXTS, seq_len=63, batch_size=1), tok.token_bytes())
    assert whole.bits_per_byte == pytest.approx(nats / (math.log(2) * n_bytes), rel=1e-6)


@torch.no_grad()
def test_core_scores_an_hf_model_like_a_direct_computation(tiny_gpt2):
    model, tok = load_hf_model(tiny_gpt2)
    ex = MCExample("Question: which is brighter?\n", ("the sun", "the moon"), 0)
    spec = TASKS_BY_LABEL["piqa"]
    rows = task_rows(spec, [ex], 1, 1234, tok, model.config.block_size)
    mean_loss, _ = score_rows(model, rows, num_steps=None, batch_size=2, pad_id=tok.bos_id)
    for row, got in zip(rows, mean_loss):  # each choice: mean NLL of its tokens after the shared prompt
        ids = torch.tensor([row.tokens])
        logp = torch.log_softmax(model.model(ids).logits[0, :-1].double(), -1)
        nll = -logp.gather(1, ids[0, 1:, None])[:, 0]
        assert got == pytest.approx(float(nll[row.start - 1 : row.end - 1].mean()), rel=1e-5)


def test_is_hf_model_tells_the_kinds_apart(tiny_gpt2, tmp_path):
    assert is_hf_model(tiny_gpt2) and is_hf_model(tmp_path / "any.gguf")
    ours = parcae_lm.save_pretrained(parcae_lm.create_model("parcae-micro"), tmp_path / "ours")
    assert not is_hf_model(ours)
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"model_type": "parcae"}))  # parcae-lm's own export
    assert not is_hf_model(export) and not is_hf_model(tmp_path / "missing" / "dir")


# ------------------------------------------------------------------------------------------ the CLI


def test_eval_commands_take_a_transformers_model(tiny_gpt2, tmp_path, monkeypatch, capsys):
    from parcae_lm.cli import main
    from parcae_lm.cli.command import UsageError
    from parcae_lm.cli.eval import _out
    from test_eval_fakes import write_bundle

    text = tmp_path / "t.txt"
    text.write_text(TEXTS[1])
    assert main(["eval", "bpb", str(tiny_gpt2), "--text", str(text), "--out", str(tmp_path / "b")]) == 0
    (r,) = json.loads((tmp_path / "b" / "bpb.json").read_text())["results"]
    assert r["num_bytes"] == len(TEXTS[1].encode("utf-8"))
    assert main(["eval", "bpb", str(tiny_gpt2), "--shard_dir", str(tmp_path)]) == 2  # shards: parcae ids
    assert main(["eval", "bpb", str(tiny_gpt2), "--text", str(text), "--tokenizer", str(tmp_path)]) == 2
    with pytest.raises(UsageError, match="give --out"):  # a .gguf file or a hub id has no eval/ beside it
        _out(tmp_path / "m.gguf", None)

    mc = [{"query": f"Question: q{i}?\n", "choices": ["yes", "no"], "gold": i % 2} for i in range(5)]
    bundle = write_bundle(
        tmp_path / "bundle",
        {
            name: (f"x/{name}.jsonl", "multiple_choice", 10, "\nAnswer: ", 50, mc)
            for name in ("piqa", "boolq")
        },
    )
    args = ["eval", "core", str(tiny_gpt2), "--bundle", str(bundle), "--seeds", "[1]", "--num_fewshot", "0"]
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    core = json.loads((tmp_path / "c" / "core.json").read_text())
    assert core["num_fewshot"] == 0 and set(core["results"][0]["tasks"]) == {"piqa", "boolq"}
    lo, hi = core["results"][0]["tasks"]["piqa"]["accuracy_ci95"]
    assert 0 <= lo <= core["results"][0]["tasks"]["piqa"]["accuracy"] <= hi <= 1

    # the anchor command, with the tiny model standing in for Gemma
    monkeypatch.setattr("parcae_lm.cli.eval.fetch_anchor_model", lambda: tiny_gpt2)
    assert (
        main(["eval", "anchor", "--bundle", str(bundle), "--max_per_task", "4", "--out", str(tmp_path / "a")])
        == 0
    )
    rows = json.loads((tmp_path / "a" / "anchor.json").read_text())["tasks"]
    assert [r["task"] for r in rows] == ["piqa", "boolq"] and all(r["examples"] == 4 for r in rows)
    for r in rows:
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
        assert r["difference"] == pytest.approx(r["accuracy"] - r["model_card"])
    assert "model card %" in (tmp_path / "a" / "anchor.md").read_text()
