"""The lm-evaluation-harness adapter, offline: direct requests and a local custom task (json data files)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from parcae_lm.eval.lambada import evaluate_lambada  # noqa: E402
from parcae_lm.eval.lm_eval_adapter import ParcaeLM  # noqa: E402
from test_eval_fakes import BigramModel, ByteTokenizer  # noqa: E402

TOK = ByteTokenizer()


def _req(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def _logprob(model, ids: list[int], start: int) -> float:
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x)["logits"][0, :-1]
    return -float(F.cross_entropy(logits[start - 1 :], x[0, start:], reduction="sum"))


def test_loglikelihood_and_trailing_space_convention():
    model = BigramModel().teach("pet: cow")  # every taught byte has one successor: greedy is unambiguous
    lm = ParcaeLM(model=model, tokenizer_obj=TOK, batch_size=2)
    (lp1, g1), (lp2, g2), (lp3, g3) = lm.loglikelihood(
        [
            _req("loglikelihood", "my pet:", " cow"),
            _req("loglikelihood", "my pet: ", "cow"),
            _req("loglikelihood", "my pet:", " dog"),
        ]
    )
    ids = [TOK.bos_id, *TOK.encode("my pet: cow")]
    assert lp1 == pytest.approx(_logprob(model, ids, 1 + len("my pet:")), rel=1e-4)
    assert lp2 == pytest.approx(lp1) and g1 and g2  # the context's trailing space moves to the continuation
    assert lp3 < lp1 and not g3


def test_rolling_loglikelihood_is_window_independent_for_a_bigram_model():
    model = BigramModel(block_size=8).teach("the cat sat on the mat")
    text = "the cat sat on the mat, and the cat sat again"
    ids = [TOK.bos_id, *TOK.encode(text)]
    full = _logprob(BigramModel(block_size=100).teach("the cat sat on the mat"), ids, 1)
    for max_length in (8, 5, 3):
        [got] = ParcaeLM(model=model, tokenizer_obj=TOK, max_length=max_length).loglikelihood_rolling(
            [_req("loglikelihood_rolling", text)]
        )
        assert got == pytest.approx(full, rel=1e-5)


def test_generate_until_is_greedy_and_stops():
    model = BigramModel().teach("go: kmnpqrs")  # one successor per byte
    lm = ParcaeLM(model=model, tokenizer_obj=TOK)
    [a, b] = lm.generate_until(
        [
            _req("generate_until", "go: k", {"until": ["q"], "max_gen_toks": 20}),
            _req("generate_until", "go: k", {"until": [], "max_gen_toks": 3}),
        ]
    )
    assert a == "mnp" and b == "mnp"


def test_lambada_numbers_match_parcae_eval_lambada():
    model = BigramModel(mean_recurrence=3).teach("s friend")
    pairs = [("he met his", " friend"), ("she met her", " frienx")]
    [r] = evaluate_lambada(model, TOK, pairs, depths=[2])
    lm = ParcaeLM(model=model, tokenizer_obj=TOK, num_steps=2)
    out = lm.loglikelihood([_req("loglikelihood", c, t) for c, t in pairs])
    assert r.accuracy == sum(g for _, g in out) / 2
    assert r.perplexity == pytest.approx(torch.tensor([-lp for lp, _ in out]).mean().exp().item(), rel=1e-5)


def test_simple_evaluate_with_a_local_task(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    rows = [
        {"question": "my pet is a", "choices": ["cat", "dog"], "gold": 0},
        {"question": "her pet is a", "choices": ["dog", "cat"], "gold": 1},
        {"question": "our pet is a", "choices": ["cat", "dog"], "gold": 1},
    ]
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "toy.yaml").write_text(
        "task: parcae_toy_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'toy.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    from lm_eval.tasks import TaskManager

    lm = ParcaeLM(model=BigramModel().teach("a cat"), tokenizer_obj=TOK)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["parcae_toy_mc"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
    )
    assert out["results"]["parcae_toy_mc"]["acc,none"] == pytest.approx(2 / 3)


def test_registered_under_parcae():
    from lm_eval.api.registry import get_model, model_registry

    assert get_model("parcae") is ParcaeLM
    assert "hf" in model_registry  # built-in models stay registered next to ours


@pytest.mark.slow
def test_lm_eval_cli_with_the_parcae_model(tmp_path):
    """`python -m parcae_lm.eval.lm_eval_adapter run --model parcae ...` on a saved tiny model (~40 s)."""
    import subprocess
    import sys

    import parcae_lm
    from parcae_lm.tokenizer import Tokenizer

    tok = Tokenizer.train(["my pet is a cat. her pet is a dog. " * 20], vocab_size=270)
    small = dict(n_embd=64, num_attention_heads=2, intermediate_size=128, init_orthogonal=False)
    model = parcae_lm.create_model("parcae-tiny", vocab_size=tok.vocab_size, block_size=64, **small)
    parcae_lm.save_pretrained(model, tmp_path / "run")
    tok.save(tmp_path / "run" / "tokenizer")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "toy.jsonl").write_text(
        json.dumps({"question": "my pet is a", "choices": ["cat", "dog"], "gold": 0})
    )
    (tmp_path / "tasks" / "toy.yaml").write_text(
        "task: parcae_toy_cli\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'toy.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    cmd = [sys.executable, "-m", "parcae_lm.eval.lm_eval_adapter", "run", "--model", "parcae"]
    cmd += ["--model_args", f"pretrained={tmp_path / 'run'},num_steps=2", "--tasks", "parcae_toy_cli"]
    cmd += ["--include_path", str(tmp_path / "tasks"), "--device", "cpu"]
    env = {**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parcae_toy_cli" in proc.stdout and "acc" in proc.stdout
