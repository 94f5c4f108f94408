"""The training loop on a micro Parcae and a small synthetic corpus: gradient accumulation, bitwise resume,
NaN stop, the run directory, and 2-process DDP (gloo) against 1 process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from parcae_lm.config import create_config
from parcae_lm.config.train import Precision, RunConfig, TrainArgs
from parcae_lm.errors import CheckpointError, ConfigError, TrainingError
from parcae_lm.model import build_model
from parcae_lm.train import checkpoint as ckpt_mod
from parcae_lm.train import train
from parcae_lm.train.distributed import DistInfo
from parcae_lm.train.optim import MuonAdamW
from parcae_lm.train.step import accumulate_gradients
from parcae_lm.train.telemetry import read_metrics
from verse import verse_shards


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """A 512-token BPE and train/val shards of synthetic verse (a few seconds to build)."""
    # a small val split keeps final evals quick
    return verse_shards(tmp_path_factory.mktemp("train-data"), train_docs=24, val_lines=25, vocab_size=512)


def make_cfg(data, out: Path, **kw) -> RunConfig:
    """The test run: RunConfig defaults + these settings + `kw` (dotted keys)."""
    tok_dir, shard_dir = data
    base = {
        "out_dir": str(out),
        "run_name": "r",
        "model_name": "parcae-micro",
        "data.shard_dir": str(shard_dir),
        "data.tokenizer_dir": str(tok_dir),
        "data.seq_len": 32,
        "train.micro_batch_size": 4,
        "train.global_batch_size": 4,
        "train.max_steps": 6,
        "log.interval": 1,
        "eval.interval": 3,
        "eval.batches": 2,
        "checkpoint.interval": 3,
        "log.progress": False,
        "sample.prompts": ["ROMEO:"],
        "sample.tokens": 8,
        "optim.muon_lr": 0.02,
        "optim.adam_lr": 0.01,
        "system.threads": 1,  # the machine is shared: one thread per process avoids oversubscription stalls
    }
    return RunConfig(train=TrainArgs(max_steps=1)).replace({**base, **kw})


def train_losses(run_dir: Path) -> list[tuple[int, float, float]]:
    return [
        (r["step"], r["loss"], r["grad_norm"])
        for r in read_metrics(run_dir / "metrics.jsonl")
        if r["kind"] == "train"
    ]


def test_gradient_accumulation_matches_one_big_batch():
    """accum 2 x batch 2 == batch 4 (loss and every gradient), with per-sequence Poisson depths and noise
    initial states: depths and h0 are drawn per row of the global batch, not per micro-batch."""
    torch.manual_seed(0)
    model = build_model(create_config("parcae-micro"))
    model.train()
    x = torch.randint(0, 97, (4, 32))
    y = torch.roll(x, -1, dims=1)
    info = DistInfo()

    def grads(batches):
        model.zero_grad(set_to_none=True)
        loss, _ = accumulate_gradients(model, batches, step=7, info=info, precision=Precision.fp32)
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss1, g1 = grads([(x, y)])
    loss2, g2 = grads([(x[:2], y[:2]), (x[2:], y[2:])])
    torch.testing.assert_close(loss1, loss2, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g2.keys() and len(g1) > 20
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-6, msg=n)
    # and a different step draws different depths (the test would be vacuous otherwise)
    model.zero_grad(set_to_none=True)
    loss3, _ = accumulate_gradients(model, [(x, y)], step=8, info=info, precision=Precision.fp32)
    assert not torch.equal(loss1, loss3)


def test_run_directory_end_to_end_via_cli(data, tmp_path, capsys):
    from parcae_lm.checkpoint import from_pretrained
    from parcae_lm.cli import main

    tok_dir, shard_dir = data
    code = main(
        [
            "train",
            "--model_name",
            "parcae-micro",
            "--data.shard_dir",
            str(shard_dir),
            "--data.tokenizer_dir",
            str(tok_dir),
            "--out_dir",
            str(tmp_path),
            "--run_name",
            "e2e",
            "--data.seq_len",
            "32",
            "--train.micro_batch_size",
            "2",
            "--train.global_batch_size",
            "4",
            "--train.max_steps",
            "4",
            "--log.interval",
            "2",
            "--eval.interval",
            "2",
            "--eval.batches",
            "1",
            "--checkpoint.interval",
            "2",
            "--checkpoint.keep_last_k",
            "1",
            "--log.progress",
            "false",
            "--sample.tokens",
            "8",
            "--sample.prompts",
            '["ROMEO:", "JULIET:"]',
            "--system.threads",
            "1",
        ]
    )
    assert code == 0
    run = tmp_path / "e2e"
    for name in (
        "config.yaml",
        "config.json",
        "model.safetensors",
        "metrics.jsonl",
        "curves.png",
        "samples.txt",
        "summary.json",
        "tokenizer",
    ):
        assert (run / name).exists(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_4"]  # keep_last_k=1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens"] == 4 * 4 * 32
    # tiny.yaml (the base config) evaluates the whole split at depth 4 at the end; + the mean recurrence 3
    assert set(summary["val"]) == {f"{m}_d{d}" for m in ("loss", "bpb") for d in (3, 4)}
    assert summary["samples"][0]["text"].startswith("ROMEO:")
    assert (tmp_path / "latest").resolve() == run.resolve()  # `parcae generate runs/latest` finds it
    assert 0 < summary["val_bpb"] < 20 and summary["val_bpb"] == summary["val"]["bpb_d3"]
    samples = (run / "samples.txt").read_text()
    assert "'ROMEO:'" in samples and "'JULIET:'" in samples
    records = read_metrics(run / "metrics.jsonl")
    train_rec = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_rec] == [2, 4]
    for key in (
        "loss",
        "grad_norm",
        "tok_per_s",
        "mfu",
        "adam_lr",
        "muon_lr",
        "spectral_radius",
        "state_norm",
        "rel_residual",
    ):
        assert key in train_rec[0], key
    assert 0 < train_rec[0]["spectral_radius"] < 1
    assert [r["step"] for r in records if r["kind"] == "val"] == [2, 4]
    out = capsys.readouterr().out
    assert "val bpb" in out and str(run) in out
    # the saved model is the trained one: `parcae eval bpb`'s evaluation of it gives the reported numbers
    from parcae_lm.eval.bpb import evaluate_bpb, shard_batches
    from parcae_lm.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(run / "tokenizer")
    token_bytes = torch.as_tensor(tokenizer.token_bytes())
    (res,) = evaluate_bpb(
        from_pretrained(run), shard_batches(shard_dir, "val", 32, 2, tokenizer), token_bytes, depths=[3]
    )
    assert res.loss == pytest.approx(summary["val"]["loss_d3"], rel=1e-5)
    assert res.bits_per_byte == pytest.approx(summary["val_bpb"], rel=1e-5)
    # a second run into the same directory refuses instead of mixing runs
    with pytest.raises(ConfigError, match="already has checkpoints"):
        train(make_cfg(data, tmp_path, run_name="e2e"))


def test_interrupted_and_resumed_run_is_bitwise_identical(data, tmp_path, monkeypatch):
    full = train(make_cfg(data, tmp_path / "a")).run_dir

    original = ckpt_mod.save_checkpoint

    def crash_after_step_3(ckpt_dir, step, *args, **kwargs):
        path = original(ckpt_dir, step, *args, **kwargs)
        if step == 3:
            raise KeyboardInterrupt("simulated preemption")
        return path

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", crash_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(data, tmp_path / "b"))
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", original)
    resumed = train(make_cfg(data, tmp_path / "b", resume=True)).run_dir

    a, b = train_losses(full), train_losses(resumed)
    assert [s for s, *_ in a] == [1, 2, 3, 4, 5, 6]
    assert a == b  # bitwise: exact float equality of every step's loss and grad norm
    wa, wb = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a checkpoint from a different model is refused with the differing field named
    with pytest.raises(CheckpointError, match="model_config.n_embd"):
        train(make_cfg(data, tmp_path / "b", resume=True, **{"train.max_steps": 8, "model.n_embd": 96}))


def test_nonfinite_loss_stops_without_touching_the_last_checkpoint(data, tmp_path, monkeypatch):
    calls = {"n": 0}
    original_step = MuonAdamW.step

    def poisoned_step(self):
        original_step(self)
        calls["n"] += 1
        if calls["n"] == 3:  # weights go bad after the 3rd update -> step 4's loss is NaN
            with torch.no_grad():
                self.adamw.param_groups[0]["params"][0].fill_(float("nan"))

    monkeypatch.setattr(MuonAdamW, "step", poisoned_step)
    cfg = make_cfg(data, tmp_path, **{"checkpoint.interval": 2, "eval.interval": 100})
    ckpt_dir = tmp_path / "r" / "checkpoints"
    with pytest.raises(TrainingError, match=r"non-finite .*Last good checkpoint: .*step_2"):
        train(cfg)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step_2"]
    state = torch.load(ckpt_dir / "step_2" / "state.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "r" / "model.safetensors").exists()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_process_gloo_run_matches_one_process(data, tmp_path, strategy):
    """torchrun --nproc_per_node 2 (gloo, CPU) gives the losses of one process with the same global batch,
    with DDP and with FSDP2 sharding."""
    tok_dir, shard_dir = data
    # The real defaults (per-sequence Poisson depths, seeded random initial state): rank r holds rows
    # [r·B, (r+1)·B) of the global batch and the model seeds each row's depth and state by its global row.
    args = [
        "--model_name",
        "parcae-micro",
        "--data.shard_dir",
        str(shard_dir),
        "--data.tokenizer_dir",
        str(tok_dir),
        "--data.seq_len",
        "32",
        "--train.micro_batch_size",
        "2",
        "--train.global_batch_size",
        "4",
        "--train.max_steps",
        "3",
        "--log.interval",
        "1",
        "--eval.interval",
        "100",
        "--eval.batches",
        "2",
        "--checkpoint.interval",
        "100",
        "--log.progress",
        "false",
        "--sample.tokens",
        "4",
        "--sample.prompts",
        '["ROMEO:"]',
        "--system.threads",
        "1",
        "--system.strategy",
        strategy,
    ]
    parcae = str(Path(sys.executable).parent / "parcae")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [parcae, "train", *args, "--out_dir", str(tmp_path), "--run_name", "one"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "--no-python",
            parcae,
            "train",
            *args,
            "--out_dir",
            str(tmp_path),
            "--run_name",
            "two",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert [s for s, *_ in a] == [s for s, *_ in b] == [1, 2, 3]
    # Step 1 (same weights, fp32 all-reduce vs accumulation): equal to float rounding.
    assert a[0][1] == pytest.approx(b[0][1], rel=1e-6) and a[0][2] == pytest.approx(b[0][2], rel=1e-5)
    # Later steps drift slightly: Muon's Newton-Schulz runs in bf16, which turns ~1e-7 gradient differences
    # into bf16-rounding-sized update differences.
    for (_, la, ga), (_, lb, gb) in zip(a[1:], b[1:]):
        assert la == pytest.approx(lb, rel=1e-3) and ga == pytest.approx(gb, rel=1e-2)
    sa = json.loads((tmp_path / "one" / "summary.json").read_text())
    sb = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert sb["world_size"] == 2 and sa["val_loss"] == pytest.approx(sb["val_loss"], rel=1e-3)
