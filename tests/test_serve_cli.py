"""`parcae serve` as a user runs it (a subprocess on a loopback port: answers, then drains on SIGTERM), and
hub ids everywhere a model is accepted (generate, eval, serve, export), offline from a local hub cache."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

import parcae_lm
from parcae_lm.checkpoint import load_run
from parcae_lm.cli import main

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from serving import greedy_text, make_model, make_tokenizer  # noqa: E402

SRC = Path(parcae_lm.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    tok = make_tokenizer()
    tok.save(d / "tokenizer")
    parcae_lm.save_pretrained(make_model(tok), d)
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parcae_serve_answers_then_drains_on_sigterm(run_dir):
    port = _free_port()
    cmd = [sys.executable, "-m", "parcae_lm", "serve", str(run_dir), "--port", str(port), "--name", "m"]
    cmd += ["--compile", "false", "--device", "cpu"]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(
                        f"the server did not come up: {proc.stdout.read() if proc.poll() is not None else ''}"
                    )
                time.sleep(0.2)
        r = client.completions.create(model="m", prompt="ROMEO:", max_tokens=8, temperature=0)
        run = load_run(run_dir)
        assert r.choices[0].text == greedy_text(run.model, run.tokenizer, "ROMEO:", 8)
        # A stream in flight when SIGTERM arrives still finishes: the server drains, then exits.
        stream = client.completions.create(
            model="m", prompt="ROMEO:", max_tokens=60, temperature=0.8, stream=True
        )
        pieces: list[str] = []
        reader = threading.Thread(
            target=lambda: pieces.extend(c.choices[0].finish_reason or "" for c in stream if c.choices)
        )
        reader.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        reader.join(60)
        assert "length" in pieces or "stop" in pieces
        # uvicorn re-raises the signal once it has shut down, so the exit status says SIGTERM.
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture
def hub(tmp_path, monkeypatch, run_dir) -> str:
    """A local hub cache (offline) holding an export of the run as org/tiny (tokenizer at the root)."""
    pytest.importorskip("transformers")
    from parcae_lm.infer.hf import export_hf

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    repo = cache / "models--org--tiny"
    export_hf(run_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    return "org/tiny"


def test_hub_ids_everywhere(hub, run_dir, tmp_path, capsys):
    from parcae_lm.infer.hf import export_hf
    from parcae_lm.serve.app import build_served

    ours = load_run(run_dir)
    run = load_run(hub)
    x = torch.randint(0, 97, (1, 8))
    assert torch.equal(run.model(x)["logits"], ours.model(x)["logits"])
    assert run.tokenizer.encode("ROMEO:") == ours.tokenizer.encode("ROMEO:")
    assert (
        main(["generate", hub, "ROMEO:", "--max_new_tokens", "6", "--temperature", "0", "--device", "cpu"])
        == 0
    )
    text = greedy_text(ours.model, ours.tokenizer, "ROMEO:", 6).rstrip("\ufffd")  # streams whole characters
    assert capsys.readouterr().out == "ROMEO:" + text + "\n"
    (tmp_path / "doc.txt").write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 4)
    out = tmp_path / "eval"  # an output directory (its default, MODEL/eval, is for local directories)
    args = ["eval", "bpb", hub, "--text", str(tmp_path / "doc.txt"), "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    assert any(out.iterdir())
    assert (export_hf(hub, tmp_path / "again") / "modeling_parcae.py").is_file()
    served = build_served(hub, compiled=False)
    assert served.name == hub and served.scheduler.max_len == ours.model.config.block_size
    # A hub id the cache does not hold: one line naming it and offline mode.
    assert main(["generate", "org/absent", "x", "--device", "cpu"]) == 1
    assert "org/absent" in capsys.readouterr().err
