"""LAMBADA accuracy (greedy match of the whole target) and lm-eval's perplexity definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parcae_lm.eval.bundle import load_bundle
from parcae_lm.eval.lambada import evaluate_lambada, load_lambada, pair_row
from test_eval_fakes import BigramModel, ByteTokenizer, write_bundle

TOK = ByteTokenizer()
PAIRS = [("he met his", " friend"), ("she met her", " frienx"), ("we met our", " cat")]


def _target_nll(model, context: str, target: str) -> tuple[float, int, bool]:
    ids = torch.tensor([[TOK.bos_id, *TOK.encode(context + target)]])
    n = len(TOK.encode(target))
    with torch.no_grad():
        logits = model(ids)["logits"][0, -n - 1 : -1]
    tgt = ids[0, -n:]
    return float(F.cross_entropy(logits, tgt, reduction="sum")), n, bool((logits.argmax(-1) == tgt).all())


def test_accuracy_and_perplexity_match_definitions():
    model = BigramModel().teach("s friend").teach("r friend")
    [r] = evaluate_lambada(model, TOK, PAIRS, batch_size=2)
    ref = [_target_nll(model, c, t) for c, t in PAIRS]
    assert [g for _, _, g in ref] == [True, False, False]
    assert r.accuracy == pytest.approx(1 / 3)
    # lm-eval: perplexity = exp(-mean over passages of the target's summed log-likelihood)
    assert r.perplexity == pytest.approx(math.exp(sum(nll for nll, _, _ in ref) / 3), rel=1e-5)
    assert r.token_perplexity == pytest.approx(
        math.exp(sum(x[0] for x in ref) / sum(x[1] for x in ref)), rel=1e-5
    )
    assert r.num_examples == 3


def test_rows_truncate_left_and_max_examples_prefix():
    row = pair_row(0, "x" * 50, " word", TOK, TOK.bos_id, max_len=20)
    assert len(row.tokens) == 20 and row.end == 20 and row.end - row.start == 5
    model = BigramModel(mean_recurrence=2).teach("s friend")
    r1, r3 = evaluate_lambada(model, TOK, PAIRS, depths=[1, 3], max_examples=2)
    assert r1.num_examples == 2 and r1.accuracy == r3.accuracy == 0.5
    assert r3.perplexity != pytest.approx(r1.perplexity)  # each depth is its own forward


def test_load_from_bundle(tmp_path):
    records = [
        {"context": "he met his ", "continuation": "friend"},
        {"context": "a b", "continuation": " c "},
    ]
    root = write_bundle(
        tmp_path,
        {
            "lambada_openai": (
                "language_understanding/lambada_openai.jsonl",
                "language_modeling",
                0,
                " ",
                0,
                records,
            )
        },
    )
    assert load_lambada(load_bundle(root)) == [("he met his", " friend"), ("a b", " c")]
