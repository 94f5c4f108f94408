"""`parcae info`, `parcae generate`, `parcae bench train` end to end."""

from __future__ import annotations

import json

import pytest
import torch

import parcae_lm
from parcae_lm.cli import main
from parcae_lm.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    text = [
        "ROMEO: But soft, what light through yonder window breaks?",
        "JULIET: O Romeo, Romeo! — ünïcødé",
    ] * 20
    tok = Tokenizer.train(text, vocab_size=300)
    tok.save(d / "tokenizer")
    torch.manual_seed(0)
    model = parcae_lm.create_model("parcae-micro", vocab_size=tok.vocab_size, init_strategy="scaled")
    parcae_lm.save_pretrained(model, d)
    return d


def test_info_prints_exact_counts(capsys):
    assert main(["info", "parcae-140m"]) == 0
    out = capsys.readouterr().out
    assert (
        "144,323,136" in out and "14,159,040" in out and "unrolled depth at the mean               20" in out
    )
    assert main(["info", "gpt-small-140m", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["flops"]["params"]["total"] == 143_141_184


def test_info_applies_and_checks_model_overrides(run_dir, capsys):
    assert main(["info", "parcae-140m", "--model.mean_recurrence", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["mean_recurrence"] == 4
    # a saved model's config takes overrides too
    assert main(["info", str(run_dir), "--model.mean_recurrence", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["mean_recurrence"] == 3


def test_info_rejects_bad_overrides(capsys):
    assert main(["info", "parcae-tiny", "--model", "mean_recurrence"]) == 2  # not a mapping: a usage error
    assert "--model: expected" in capsys.readouterr().err
    assert main(["info", "parcae-tiny", "--model.injection_type", "cubic"]) == 1
    assert "injection_type" in capsys.readouterr().err
    assert main(["info", "parcae-tiny", "--model.n_embd", "wide"]) == 1
    assert "model.n_embd: expected an integer, got 'wide'" in capsys.readouterr().err
    assert main(["info", "parcae-tiny", "--model.bogus", "1"]) == 1
    assert "unknown model field 'bogus'" in capsys.readouterr().err


def test_generate_streams_and_is_reproducible(run_dir, capsys):
    args = ["generate", str(run_dir), "ROMEO:", "--max_new_tokens", "12", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and len(first) > len("ROMEO:\n")
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert main([*args, "--num_samples", "2", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2


@pytest.mark.slow
def test_generate_compiled_equals_eager(run_dir, capsys):
    """`--compile` decodes through the static compiled step: the same greedy text as the eager path."""
    args = ["generate", str(run_dir), "ROMEO:", "--max_new_tokens", "12", "--temperature", "0"]
    assert main(args) == 0
    eager = capsys.readouterr().out
    assert main([*args, "--compile", "true"]) == 0
    assert capsys.readouterr().out == eager


def test_generate_errors_are_clear(run_dir, tmp_path, capsys):
    assert main(["generate", str(run_dir), "x" * 10, "--max_new_tokens", "500"]) == 1
    assert "exceeds the model's context" in capsys.readouterr().err
    parcae_lm.save_pretrained(parcae_lm.create_model("parcae-micro"), tmp_path)
    assert main(["generate", str(tmp_path), "hi"]) == 1
    assert "no tokenizer" in capsys.readouterr().err


def test_bench_train_reports_mfu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "train",
                "--model_name",
                "parcae-micro",
                "--batch_size",
                "2",
                "--seq_len",
                "32",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["tokens_per_second"] > 0 and 0 < r["mfu"] < 1.5 and r["peak_flops"] > 1e8
    assert r["core_passes_per_step"] > 0
    assert "MFU" in capsys.readouterr().out
