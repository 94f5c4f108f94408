"""Bits per byte: exact UTF-8 byte accounting, the BOS/special-token convention, windows, depth sweeps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parcae_lm.errors import EvalError
from parcae_lm.eval.bpb import (
    IGNORE_INDEX,
    check_byte_accounting,
    count_text_windows,
    evaluate_bpb,
    read_documents,
    text_batches,
)
from test_eval_fakes import BigramModel, PairTokenizer, RandomLM

TOK = PairTokenizer()
DOCS = ["café au lait, s'il vous plaît", "日本語 and émigré ñ", "plain ascii text"]


def test_every_text_token_is_a_target_exactly_once():
    for seq_len in (1, 4, 7, 64):
        batches = list(text_batches(TOK, DOCS, seq_len, batch_size=3))
        targets = [int(t) for _, y in batches for t in y.flatten() if t != IGNORE_INDEX]
        assert targets == [t for d in DOCS for t in TOK.encode(d)]
        assert sum(x.shape[0] for x, _ in batches) == count_text_windows(TOK, DOCS, seq_len)
        assert all(x.shape[1] == seq_len for x, _ in batches)


def test_byte_counts_are_exact_on_multibyte_text():
    model = BigramModel(vocab_size=TOK.vocab_size)  # all-zero logits: NLL = ln V per token
    [r] = evaluate_bpb(model, text_batches(TOK, DOCS, 5, 2), TOK.token_bytes())
    n_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    n_tokens = sum(len(TOK.encode(d)) for d in DOCS)  # 'é' is one 2-byte token here
    assert r.num_bytes == n_bytes == 72
    assert r.num_tokens == n_tokens < n_bytes
    assert r.loss == pytest.approx(math.log(TOK.vocab_size))
    assert r.bits_per_byte == pytest.approx(n_tokens * math.log(TOK.vocab_size) / (math.log(2) * n_bytes))
    assert r.perplexity == pytest.approx(TOK.vocab_size)


def test_special_token_targets_are_excluded_from_loss_and_bytes():
    model = RandomLM(vocab_size=TOK.vocab_size, block_size=16)
    text = TOK.encode("ab é")
    x = torch.tensor([[TOK.bos_id, *text, TOK.eos_id, TOK.bos_id, 97]])  # two documents in one packed row
    y = torch.tensor([[*text, TOK.eos_id, TOK.bos_id, 97, IGNORE_INDEX]])
    [r] = evaluate_bpb(model, [(x, y)], TOK.token_bytes())
    with torch.no_grad():
        logits = model(x)["logits"][0]
    nll = F.cross_entropy(logits, y[0].clamp(min=0), reduction="none")
    keep = torch.tensor([1, 1, 1, 1, 0, 0, 1, 0], dtype=torch.bool)  # not EOS, not BOS, not padding
    assert r.num_tokens == 5 and r.num_bytes == 1 + 1 + 1 + 2 + 1
    assert r.loss == pytest.approx(float(nll[keep].sum()) / 5, rel=1e-5)
    assert r.bits_per_byte == pytest.approx(float(nll[keep].sum()) / (math.log(2) * 6), rel=1e-5)


def test_doc_ids_reach_the_model_and_depths_are_swept():
    model = BigramModel(vocab_size=TOK.vocab_size, mean_recurrence=4).teach("café")
    seen = {}
    forward = model.forward

    def spy(input_ids, **kw):
        seen.setdefault("doc_ids", kw.get("doc_ids"))
        return forward(input_ids, **kw)

    model.forward = spy
    x = torch.tensor([[TOK.bos_id, 99, 97, 102]])
    batch = (x, torch.tensor([[99, 97, 102, IGNORE_INDEX]]), torch.tensor([[1, 1, 1, 1]]))
    r1, r8 = evaluate_bpb(model, [batch], TOK.token_bytes(), depths=[1, 8])
    assert torch.equal(seen["doc_ids"], batch[2])
    assert {c["num_steps"] for c in model.calls} == {1, 8}
    assert r8.loss < r1.loss  # the fake sharpens its (correct) predictions with depth


def test_deterministic_and_max_tokens():
    model = RandomLM(vocab_size=TOK.vocab_size, block_size=8)
    a = evaluate_bpb(model, text_batches(TOK, DOCS, 8, 1), TOK.token_bytes())
    b = evaluate_bpb(model, text_batches(TOK, DOCS, 8, 1), TOK.token_bytes())
    assert a == b
    [c] = evaluate_bpb(model, text_batches(TOK, DOCS, 8, 1), TOK.token_bytes(), max_tokens=10)
    assert 10 <= c.num_tokens < a[0].num_tokens


def test_byte_accounting_check_and_bad_input(tmp_path):
    check_byte_accounting(TOK, DOCS)

    class Wrong(PairTokenizer):
        def token_bytes(self):
            out = super().token_bytes()
            out[self.E_ACUTE] = 3  # what decoding a partial byte to U+FFFD would count
            return out

    with pytest.raises(EvalError, match="token_bytes add up to"):
        check_byte_accounting(Wrong(), DOCS)
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(EvalError, match=r"d.jsonl:2"):
        read_documents(tmp_path / "d.jsonl")
    (tmp_path / "t.txt").write_text("héllo")
    assert read_documents(tmp_path / "t.txt") == ["héllo"]
    with pytest.raises(EvalError, match="no scored tokens"):
        evaluate_bpb(RandomLM(), [], TOK.token_bytes())
