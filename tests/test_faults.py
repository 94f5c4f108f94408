"""Fault injection: bad inputs and faults against the Python API, each pinned to its exact failure mode —
the error type, a fragment of its one-line message, and what is on disk afterwards.

Covers training checkpoints (code hidden in a pickle, truncation, NaN poisoning, a kill or a full disk
mid-write), exported weights (corrupted bytes, checksums, NaN), shards (another tokenizer, ids outside the
vocabulary, broken manifests), model inputs, configs, run directories (concurrent trainings, files in the
way, read-only and full disks, torn metrics, signals). Full-disk and read-only cases mount a small tmpfs
and are skipped where that needs root. docs/reliability.md lists every case with its test.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from parcae_lm.checkpoint import from_pretrained, load_run, save_pretrained
from parcae_lm.config import create_config, from_dict
from parcae_lm.config.train import RunConfig, TrainArgs, load_run_config
from parcae_lm.data.loader import TokenLoader, iter_eval_batches
from parcae_lm.data.shards import MANIFEST, Manifest, check_shards, prepare
from parcae_lm.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    StorageError,
    TokenizerError,
    TrainingError,
)
from parcae_lm.eval.bpb import shard_batches
from parcae_lm.files import atomic_write_text, exclusive_lock, file_lock, write_failure
from parcae_lm.infer.quality import validation_batches
from parcae_lm.model import build_model
from parcae_lm.tokenizer import Tokenizer
from parcae_lm.train import checkpoint as ckpt_mod
from parcae_lm.train import train
from parcae_lm.train.checkpoint import rng_state, set_rng_state
from parcae_lm.train.telemetry import read_metrics
from test_train_loop import make_cfg
from verse import WORDS, verse_shards

pytestmark = pytest.mark.filterwarnings("ignore:the training text")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    return verse_shards(tmp_path_factory.mktemp("fault-data"), train_docs=24, val_lines=25, vocab_size=512)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted 6-step run (checkpoints at steps 3 and 6): the bitwise reference and a source of
    checkpoints to damage."""
    return train(make_cfg(data, tmp_path_factory.mktemp("reference"))).run_dir


@pytest.fixture(scope="module")
def other_tokenizer(data, tmp_path_factory) -> Path:
    """A tokenizer of the same vocabulary size as the data's, trained on other text."""
    tok = Tokenizer.load(data[0])
    rng = np.random.default_rng(1)
    words = [w[::-1].upper() for w in WORDS] + ["zephyr", "quixotic", "jubilant", "VORTEX"]
    texts = [" ".join(rng.choice(words, size=400)) + "\n" for _ in range(60)]
    other = Tokenizer.train(texts, tok.vocab_size)
    assert other.vocab_size == tok.vocab_size and other.fingerprint() != tok.fingerprint()
    return other.save(tmp_path_factory.mktemp("other-tokenizer") / "tok")


def copy_run(src: Path, out_dir: Path) -> Path:
    """A copy of a run directory under out_dir, with the same run name."""
    dst = out_dir / src.name
    shutil.copytree(src, dst)
    return dst


def weights_equal(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at `path` (a full or read-only disk on demand); skips the test without root."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(directory: Path, leave_bytes: int) -> Path:
    """Fill the file system of `directory` up to `leave_bytes` of free space."""
    filler = directory / "filler"
    free = shutil.disk_usage(directory).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))
    return filler


class Payload:
    """Pickles as a call to os.system: unpickling it with weights_only=False runs the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


TRAIN_SCRIPT = """
import sys
from parcae_lm.config.train import load_run_config
from parcae_lm.train import train
train(load_run_config(sys.argv[1]))
"""


def wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------------------- training checkpoints


@pytest.mark.parametrize("file", ["state.pt", "ranks.pt"])
def test_code_hidden_in_a_training_checkpoint_never_runs(reference, data, tmp_path, file):
    run = copy_run(reference, tmp_path)
    ckpt = run / "checkpoints" / "step_6" / file
    marker = tmp_path / "pwned"
    payload = {"trainer": Payload(marker)} if file == "state.pt" else [{"rng": Payload(marker)}]
    torch.save(payload, ckpt)
    with pytest.raises(CheckpointError, match=rf"{file} holds objects other than tensors.*cannot run code"):
        train(make_cfg(data, tmp_path, resume=True))
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # the payload is real: an unsafe load does run it
    assert marker.exists()


def test_truncated_checkpoint_state_is_refused_by_name(reference, data, tmp_path):
    run = copy_run(reference, tmp_path)
    state = run / "checkpoints" / "step_6" / "state.pt"
    state.write_bytes(state.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint file .*step_6/state.pt"):
        train(make_cfg(data, tmp_path, resume=True))


def test_checkpoint_missing_its_rank_states_is_refused(reference, data, tmp_path):
    run = copy_run(reference, tmp_path)
    (run / "checkpoints" / "step_6" / "ranks.pt").unlink()
    with pytest.raises(CheckpointError, match=r"ranks.pt is missing: the checkpoint is incomplete"):
        train(make_cfg(data, tmp_path, resume=True))


def test_checkpoint_of_another_format_version_is_refused(reference, data, tmp_path):
    run = copy_run(reference, tmp_path)
    path = run / "checkpoints" / "step_6" / "state.pt"
    state = torch.load(path, weights_only=True)
    torch.save({**state, "format_version": 1}, path)
    with pytest.raises(CheckpointError, match=r"checkpoint format 1 != 2 \(written by another version"):
        train(make_cfg(data, tmp_path, resume=True))


def test_a_tensor_in_place_of_a_checkpoint_is_refused(reference, data, tmp_path):
    run = copy_run(reference, tmp_path)
    torch.save(torch.zeros(3), run / "checkpoints" / "step_6" / "state.pt")
    with pytest.raises(CheckpointError, match="is not a training checkpoint"):
        train(make_cfg(data, tmp_path, resume=True))


@pytest.mark.parametrize("part", ["model", "optimizer"])
def test_nan_poisoned_checkpoint_is_refused_on_resume(reference, data, tmp_path, part):
    run = copy_run(reference, tmp_path)
    path = run / "checkpoints" / "step_6" / "state.pt"
    state = torch.load(path, weights_only=True)
    if part == "model":
        state["model"]["transformer.wte.weight"][0, :5] = float("nan")
        where = r"model\.transformer\.wte\.weight"
    else:
        first = next(iter(state["optimizer"]["state"].values()))
        next(v for v in first.values() if v.is_floating_point() and v.numel() > 1).fill_(float("inf"))
        where = r"optimizer\.state\."
    torch.save(state, path)
    metrics_before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(
        CheckpointError, match=rf"step_6 holds [\d,]+ non-finite .* in {where}.*resume from .*step_3"
    ):
        train(make_cfg(data, tmp_path, resume=True, **{"train.max_steps": 8}))
    assert (run / "metrics.jsonl").read_bytes() == metrics_before  # nothing was touched
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_3", "step_6"]


def test_checkpoint_from_another_world_size_is_refused(reference, data, tmp_path):
    run = copy_run(reference, tmp_path)
    path = run / "checkpoints" / "step_6" / "ranks.pt"
    ranks = torch.load(path, weights_only=True)
    torch.save(ranks * 2, path)
    with pytest.raises(CheckpointError, match=r"written by 2 rank\(s\) but this run has 1"):
        train(make_cfg(data, tmp_path, resume=True))


def test_resume_with_another_sequence_length_names_the_setting(reference, data, tmp_path):
    copy_run(reference, tmp_path)
    with pytest.raises(
        CheckpointError, match=r"(?s)incompatible settings:.*\n  seq_len: checkpoint 32 vs now 16"
    ):
        train(make_cfg(data, tmp_path, resume=True, **{"data.seq_len": 16}))


def test_a_crash_mid_checkpoint_keeps_the_previous_one(data, tmp_path, monkeypatch):
    original = ckpt_mod._fsync_write

    def crash_on_second_state(path, obj):
        if path.name == "state.pt" and "step_6" in path.parent.name:
            path.write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt("killed mid-write")
        original(path, obj)

    monkeypatch.setattr(ckpt_mod, "_fsync_write", crash_on_second_state)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(data, tmp_path))
    ckpts = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_3"]  # no temporary directory left either
    assert ckpt_mod.latest_checkpoint(ckpts).name == "step_3"


def test_leftovers_of_crashed_writes_are_cleaned_by_the_next_save(reference, data, tmp_path):
    run = copy_run(reference, tmp_path)
    ckpts = run / "checkpoints"
    (ckpts / ".tmp-step_9-abc").mkdir()
    (ckpts / ".step_3.old-123").mkdir()
    shutil.rmtree(ckpts / "step_6")
    train(make_cfg(data, tmp_path, resume=True))
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_3", "step_6"]


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


# ------------------------------------------------------------------------------ exported weights


def _saved(tmp_path: Path, name: str = "parcae-micro") -> Path:
    torch.manual_seed(0)
    return save_pretrained(build_model(create_config(name)), tmp_path / "model")


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_corrupted_weight_bytes_are_refused_naming_the_file(tmp_path):
    d = _saved(tmp_path)
    size = (d / "model.safetensors").stat().st_size
    _overwrite(d / "model.safetensors", size // 2, b"\xff" * 4096)  # 1,024 float32 NaNs
    with pytest.raises(
        CheckpointError, match=r"model.safetensors does not match the sha256 recorded .* refusing to load it"
    ):
        from_pretrained(d)


def test_corrupted_weights_without_a_checksum_fail_the_finiteness_check(tmp_path):
    d = _saved(tmp_path)
    (d / "checksums.json").unlink()
    size = (d / "model.safetensors").stat().st_size
    _overwrite(d / "model.safetensors", size // 2, b"\xff" * 4096)
    with pytest.raises(CheckpointError, match=r"holds 1,024 NaN/inf weight value\(s\), in transformer\."):
        from_pretrained(d)


def test_allow_unverified_loads_a_corrupted_model_with_a_warning(tmp_path):
    d = _saved(tmp_path)
    size = (d / "model.safetensors").stat().st_size
    _overwrite(d / "model.safetensors", size // 2, b"\xff" * 4096)
    with pytest.warns(UserWarning, match="loading it anyway"):
        model = from_pretrained(d, allow_unverified=True)
    assert sum(int((~torch.isfinite(p)).sum()) for p in model.parameters()) == 1024


def test_nan_weights_saved_by_a_model_are_refused(tmp_path):
    torch.manual_seed(0)
    model = build_model(create_config("gpt-micro"))
    with torch.no_grad():
        model.transformer.h[0].attn.c_q.weight[0, 0] = float("nan")
    save_pretrained(model, tmp_path / "m")  # the checksum matches: the NaN is in the weights themselves
    with pytest.raises(
        CheckpointError, match=r"1 NaN/inf weight value\(s\), in transformer.h.0.attn.c_q.weight"
    ):
        from_pretrained(tmp_path / "m")


def test_a_damaged_checksum_record_is_refused(tmp_path):
    d = _saved(tmp_path)
    (d / "checksums.json").write_text('{"sha256": ["not", "a", "mapping"]}')
    with pytest.raises(CheckpointError, match=r"checksums.json is not a valid checksum record"):
        from_pretrained(d)


def test_truncated_safetensors_is_refused(tmp_path):
    d = _saved(tmp_path)
    (d / "checksums.json").unlink()
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="is not a readable safetensors file"):
        from_pretrained(d)


def test_verified_weights_round_trip(tmp_path):
    d = _saved(tmp_path)
    recorded = json.loads((d / "checksums.json").read_text())["sha256"]["model.safetensors"]
    assert recorded == __import__("hashlib").sha256((d / "model.safetensors").read_bytes()).hexdigest()
    assert from_pretrained(d).config == create_config("parcae-micro")


def test_code_hidden_in_a_pickled_weight_file_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "config.json").write_text(json.dumps(create_config("gpt-micro").to_dict()))
    torch.save({"model": Payload(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="could not be loaded with weights_only=True"):
        from_pretrained(tmp_path)
    assert not marker.exists()


def test_save_pretrained_onto_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "taken").write_text("x")
    model = build_model(create_config("gpt-micro"))
    with pytest.raises(StorageError, match=r"model directory .*taken is a file, not a directory"):
        save_pretrained(model, tmp_path / "taken")
    with pytest.raises(StorageError, match=r"taken is a file, not a directory"):
        save_pretrained(model, tmp_path / "taken" / "below")
    assert (tmp_path / "taken").read_text() == "x"


def test_save_pretrained_on_a_full_disk_leaves_nothing_behind(tmp_path):
    model = build_model(create_config("parcae-micro"))
    with tmpfs(tmp_path / "disk", "200k") as disk:
        with pytest.raises(StorageError, match=r"cannot write the model at .*: the disk is full"):
            save_pretrained(model, disk / "m")
        assert os.listdir(disk / "m") == []


def test_save_pretrained_on_a_read_only_disk(tmp_path):
    model = build_model(create_config("gpt-micro"))
    with (
        tmpfs(tmp_path / "ro", "1m", read_only=True) as disk,
        pytest.raises(StorageError, match=r"the file system is read-only"),
    ):
        save_pretrained(model, disk / "m")


def test_a_mistyped_relative_path_with_a_slash_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    import parcae_lm.checkpoint as checkpoint_mod

    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint_mod, "hub_snapshot", lambda *a, **k: pytest.fail("went to the hub"))
    with pytest.raises(CheckpointError, match=r"model directory runs/ref3O does not exist"):
        from_pretrained("runs/ref3O")


def test_a_model_path_that_is_a_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is a file; expected a directory with config.json"):
        from_pretrained(tmp_path / "model.safetensors")


def test_a_run_without_a_tokenizer_names_where_it_looked(tmp_path):
    d = _saved(tmp_path)
    with pytest.raises(TokenizerError, match=r"no tokenizer for .*looked for .*tokenizer/tokenizer.json"):
        load_run(d)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("norm_eps", float("nan"), "norm_eps must be finite"),
        ("norm_eps", "1e-5", "norm_eps must be a number, got '1e-5'"),
        ("qk_norm", 1, "qk_norm must be true or false, got 1"),
        ("padding_multiple", 0, "padding_multiple must be a positive integer, got 0"),
    ],
)
def test_a_bad_field_in_config_json_names_file_and_field(tmp_path, field, value, message):
    d = _saved(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(CheckpointError, match=rf"config.json: {message}"):
        from_pretrained(d)


# ------------------------------------------------------------------------------------------ shards


def test_eval_bpb_refuses_shards_of_another_tokenizer(data, other_tokenizer):
    tok_dir, shard_dir = data
    other = Tokenizer.load(other_tokenizer)
    with pytest.raises(DataError, match=r"tokenizer mismatch: the shards in .*shards were written with"):
        shard_batches(shard_dir, "val", 32, 2, other)
    assert next(iter(shard_batches(shard_dir, "val", 32, 2, Tokenizer.load(tok_dir))))[0].shape == (2, 32)


def test_inference_quality_refuses_shards_of_another_tokenizer(data, other_tokenizer):
    with pytest.raises(DataError, match="tokenizer mismatch"):
        validation_batches(data[1], 32, 2, 1, Tokenizer.load(other_tokenizer))


def test_training_refuses_shards_of_another_tokenizer_and_writes_nothing(data, other_tokenizer, tmp_path):
    cfg = make_cfg(data, tmp_path, **{"data.tokenizer_dir": str(other_tokenizer)})
    with pytest.raises(DataError, match=r"tokenizer mismatch: .*re-tokenize the corpus"):
        train(cfg)
    assert not (tmp_path / "r").exists()


def _corrupt_shard(data, tmp_path) -> Path:
    shards = tmp_path / "shards"
    shutil.copytree(data[1], shards)
    val = shards / "val_000000.bin"
    ids = np.fromfile(val, dtype="<u2")
    ids[40] = 65535
    ids.tofile(val)
    return shards


def test_a_shard_id_outside_the_vocabulary_is_named_in_evaluation(data, tmp_path):
    shards = _corrupt_shard(data, tmp_path)
    with pytest.raises(DataError, match=r"val_000000.bin holds token id 65535 at token 40, outside the"):
        list(iter_eval_batches(shards, "val", 2, 32))


def test_a_shard_id_outside_the_vocabulary_is_named_in_training(data, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(data[1], shards)
    train_file = shards / "train_000000.bin"
    ids = np.fromfile(train_file, dtype="<u2")
    ids[::7] = 65535  # in every window
    ids.tofile(train_file)
    loader = TokenLoader(shards, "train", 2, 32)
    with pytest.raises(DataError, match=r"train_000000.bin holds token id 65535"):
        next(loader)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": "float64"}, r"dtype 'float64' does not match vocab_size"),
        ({"bos_id": 10**6}, r"bos_id 1000000 is not an id of the"),
        ({"vocab_size": "many"}, r"vocab_size must be a positive integer"),
        ({"splits": {"train": {"shards": 3}}}, r"is not a valid shard manifest"),
    ],
)
def test_a_damaged_manifest_is_refused(data, tmp_path, change, message):
    shards = tmp_path / "shards"
    shutil.copytree(data[1], shards)
    manifest = json.loads((shards / MANIFEST).read_text())
    (shards / MANIFEST).write_text(json.dumps({**manifest, **change}))
    with pytest.raises(DataError, match=message):
        Manifest.load(shards)


def test_a_manifest_that_is_not_json(data, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(data[1], shards)
    (shards / MANIFEST).write_text('{"dtype": "uint16", ')
    with pytest.raises(DataError, match="is not a valid shard manifest"):
        check_shards(shards, Tokenizer.load(data[0]))


def test_a_truncated_shard_file_is_refused(data, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(data[1], shards)
    f = shards / "val_000000.bin"
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"val_000000.bin has \d+ bytes, the manifest says"):
        list(iter_eval_batches(shards, "val", 2, 32))


def test_prepare_refuses_to_overwrite_shards(data, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty"):
        prepare(["a b c"], data[0], tmp_path / "s", val_fraction=0.5, progress=False)
    assert os.listdir(tmp_path / "s") == ["keep"]


# ------------------------------------------------------------------------------------ model inputs


@pytest.mark.parametrize("name", ["parcae-micro", "gpt-micro"])
@pytest.mark.parametrize("bad", [97, 100, -1])  # vocab 97, padded to 104: ids 97..103 are padding rows
def test_token_ids_outside_the_vocabulary_are_a_value_error(name, bad):
    model = build_model(create_config(name)).eval()
    x = torch.tensor([[1, 2, bad]])
    with pytest.raises(
        ValueError, match=rf"token id {bad} is outside the vocabulary of this model \(ids 0..96\)"
    ):
        model(x)


def test_generate_refuses_ids_outside_the_vocabulary():
    model = build_model(create_config("parcae-micro")).eval()
    with pytest.raises(ValueError, match="token id 65535 is outside the vocabulary"):
        model.generate(torch.tensor([[1, 65535]]), max_new_tokens=3)


@pytest.mark.parametrize(
    "ids", [torch.tensor([1, 2, 3]), torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2, 3, dtype=torch.long)]
)
def test_input_ids_of_the_wrong_shape_or_type(ids):
    model = build_model(create_config("gpt-micro"))
    with pytest.raises(ValueError, match=r"input_ids must be a \[batch, seq\] integer tensor"):
        model(ids)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": float("nan")}, "temperature must be ≥ 0, got nan"),
        ({"temperature": -1.0}, "temperature must be ≥ 0, got -1.0"),
        ({"top_k": 0}, "top_k must be ≥ 1, got 0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"max_new_tokens": -5}, "max_new_tokens must be ≥ 0, got -5"),
        ({"max_new_tokens": 1000}, "exceeds the context of 64 tokens"),
    ],
)
def test_invalid_sampling_values(kwargs, message):
    model = build_model(create_config("parcae-micro")).eval()
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([[1, 2]]), **kwargs)


def test_training_loss_and_gradients_are_unchanged_by_the_input_checks():
    """The checks only read the ids: the same batch gives the same loss with and without them."""
    torch.manual_seed(0)
    model = build_model(create_config("parcae-micro")).train()
    x = torch.randint(0, 97, (2, 16))
    loss = model(x, labels=x, return_logits=False)["loss"]
    checked = type(model).check_input_ids
    try:
        type(model).check_input_ids = lambda self, ids: None
        torch.manual_seed(0)
        again = build_model(create_config("parcae-micro")).train()
        unchecked = again(x, labels=x, return_logits=False)["loss"]
    finally:
        type(model).check_input_ids = checked
    assert torch.equal(loss, unchecked)


# ------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train.max_tokens": math.inf}, "train.max_tokens must be finite, got inf"),
        ({"optim.muon_lr": math.inf}, "optim.muon_lr must be finite, got inf"),
        ({"optim.adam_eps": math.nan}, "optim.adam_eps must be finite"),
        ({"train.grad_clip": math.nan}, "train.grad_clip must be finite"),
        ({"sample.temperature": math.nan}, "sample.temperature must be finite"),
        ({"optim.adam_betas": [0.9, math.nan]}, "optim.adam_betas must be finite"),
        ({"system.device": "gpu"}, "system.device must be cpu, cuda, cuda:N, mps or null, got 'gpu'"),
        ({"run_name": ".."}, "run_name may only contain"),
        ({"run_name": "latest"}, "may not be 'latest'"),
        ({"run_name": ".hidden"}, "may not start with '.'"),
        ({"seed": -1}, r"seed must be in \[0, 2\^63 - 1\], got -1"),
        ({"out_dir": ""}, "out_dir must be a directory path"),
        ({"model.norm_eps": math.nan}, "model parcae-tiny with overrides .*norm_eps must be finite"),
        ({"model.padding_multiple": 0}, "padding_multiple must be a positive integer, got 0"),
        ({"model.n_embd": 33}, "embedding dimension 33 is not divisible"),
        ({"train.max_steps": "ten"}, "train.max_steps: expected an integer or null, got 'ten'"),
        ({"eval.depths": [0]}, r"eval.depths must be a non-empty list of positive ints, got \[0\]"),
        ({"log.wandb_project": ""}, "log.wandb_project must be a non-empty string"),
    ],
)
def test_bad_run_config_values_are_refused_before_anything_runs(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config("tiny", {"run_name": "x", **override})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_steps": "5"}, "train.max_steps must be an integer or null, got '5'"),
        ({"max_steps": 5.0}, "train.max_steps must be an integer or null, got 5.0"),
        ({"max_steps": 5, "grad_clip": "1"}, "train.grad_clip must be a number, got '1'"),
    ],
)
def test_run_config_dataclasses_built_in_code_are_type_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(train=TrainArgs(**kwargs))


def test_model_config_from_a_dict_is_type_checked():
    d = create_config("gpt-micro").to_dict()
    with pytest.raises(ConfigError, match="bias must be true or false, got 'yes'"):
        from_dict({**d, "bias": "yes"})


# -------------------------------------------------------------------------------- run directories


def test_a_second_training_into_the_same_run_directory_is_refused_and_the_first_finishes(data, tmp_path):
    cfg = make_cfg(data, tmp_path, **{"train.max_steps": 12, "checkpoint.interval": 6, "eval.interval": 6})
    (tmp_path / "cfg.yaml").write_text(cfg.to_yaml())
    first = run_python(TRAIN_SCRIPT, str(tmp_path / "cfg.yaml"))
    lock = tmp_path / "r" / ".lock"
    wait_for(lambda: lock.is_file() and lock.read_text().strip(), what="the first run to take its lock")
    with pytest.raises(StorageError, match=rf"run directory .*r is in use by pid {first.pid} on "):
        train(make_cfg(data, tmp_path, resume=True))
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    run = tmp_path / "r"
    assert json.loads((run / "summary.json").read_text())["steps"] == 12
    assert train_steps(run) == list(range(1, 13))  # one writer: every line whole, none twice
    assert lock.read_text() == ""  # released


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = run_python(
        "import sys, time\nfrom pathlib import Path\nfrom parcae_lm.files import exclusive_lock\n"
        "with exclusive_lock(Path(sys.argv[1]), 'the thing'):\n    print('held', flush=True)\n    time.sleep(60)",
        str(tmp_path / ".lock"),
    )
    assert holder.stdout.readline().strip() == "held"
    with (
        pytest.raises(StorageError, match=rf"the thing is in use by pid {holder.pid} on .* since "),
        exclusive_lock(tmp_path / ".lock", "the thing"),
    ):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive_lock(tmp_path / ".lock", "the thing"):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_a_resumed_run_after_sigkill_is_bitwise_identical(reference, data, tmp_path):
    cfg = make_cfg(data, tmp_path)
    (tmp_path / "cfg.yaml").write_text(cfg.to_yaml())
    victim = run_python(TRAIN_SCRIPT, str(tmp_path / "cfg.yaml"))
    step3 = tmp_path / "r" / "checkpoints" / "step_3" / "state.pt"
    wait_for(step3.is_file, what="the first checkpoint")
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    resumed = train(make_cfg(data, tmp_path, resume=True)).run_dir
    assert weights_equal(reference, resumed)
    assert train_steps(resumed) == list(range(1, 7))


def test_a_config_error_at_run_time_leaves_no_run_directory(data, tmp_path):
    with pytest.raises(DataError, match="not enough for one batch"):
        train(make_cfg(data, tmp_path, **{"train.micro_batch_size": 4096, "train.global_batch_size": 4096}))
    assert not (tmp_path / "r").exists()


def test_a_failure_during_setup_removes_the_run_directory_it_created(data, tmp_path, monkeypatch):
    import parcae_lm.train.run as run_mod

    def broken(*args, **kwargs):
        raise ConfigError("tensorboard=true needs the tensorboard package")

    monkeypatch.setattr(run_mod, "MetricsLogger", broken)
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        train(make_cfg(data, tmp_path))
    assert os.listdir(tmp_path) == []


def test_a_failure_during_setup_keeps_an_existing_run_directory(reference, data, tmp_path, monkeypatch):
    import parcae_lm.train.run as run_mod

    run = copy_run(reference, tmp_path)

    def tree() -> dict[str, bytes]:
        return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    before = tree()
    monkeypatch.setattr(run_mod, "MetricsLogger", lambda *a, **k: (_ for _ in ()).throw(ConfigError("no")))
    with pytest.raises(ConfigError, match="no"):
        train(make_cfg(data, tmp_path, resume=True, **{"train.max_steps": 8}))
    assert tree() == before  # config.yaml too: it is written only once the setup succeeded


def test_existing_checkpoints_without_resume_are_refused(reference, data, tmp_path):
    run = copy_run(reference, tmp_path)
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="already has checkpoints; pass --resume true"):
        train(make_cfg(data, tmp_path, **{"train.max_steps": 7}))
    assert (run / "config.yaml").read_text() == config_before


@pytest.mark.parametrize("blocked", ["out_dir", "run_dir"])
def test_a_file_where_a_directory_should_be(data, tmp_path, blocked):
    target = tmp_path / "out" if blocked == "out_dir" else tmp_path / "out" / "r"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("a file")
    which = "out_dir" if blocked == "out_dir" else "run directory"
    with pytest.raises(StorageError, match=rf"{which} .*{target.name} is a file, not a directory"):
        train(make_cfg(data, tmp_path / "out"))
    assert target.read_text() == "a file"


def test_a_read_only_out_dir(data, tmp_path):
    with (
        tmpfs(tmp_path / "ro", "1m", read_only=True) as disk,
        pytest.raises(
            StorageError, match=r"cannot write the run directory at .*: the file system is read-only"
        ),
    ):
        train(make_cfg(data, disk))


def test_a_disk_filling_during_training_keeps_the_last_checkpoint_and_resumes_bitwise(
    reference, data, tmp_path, monkeypatch
):
    original = ckpt_mod.save_checkpoint
    with tmpfs(tmp_path / "disk", "16m") as disk:

        def save_then_fill(ckpt_dir, step, *args, **kwargs):
            path = original(ckpt_dir, step, *args, **kwargs)
            if step == 3:
                fill_disk(disk, leave_bytes=200_000)  # room for metrics lines, not for a checkpoint
            return path

        monkeypatch.setattr(ckpt_mod, "save_checkpoint", save_then_fill)
        with pytest.raises(StorageError, match=r"checkpoint step 6 .*the disk is full .*step_3 is intact"):
            train(make_cfg(data, disk))
        ckpts = disk / "r" / "checkpoints"
        assert sorted(p.name for p in ckpts.iterdir()) == ["step_3"]
        (disk / "filler").unlink()
        monkeypatch.setattr(ckpt_mod, "save_checkpoint", original)
        resumed = train(make_cfg(data, disk, resume=True)).run_dir
        assert weights_equal(reference, resumed)


class _FillsUp:
    """A file whose second write finds the disk full."""

    def __init__(self, f) -> None:
        self.f, self.writes = f, 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(text)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def test_a_disk_full_while_logging_metrics_is_named(data, tmp_path, monkeypatch):
    import builtins

    import parcae_lm.train.telemetry as telemetry

    opener = lambda *a, **k: _FillsUp(builtins.open(*a, **k))  # noqa: E731, SIM115 - the logger closes it
    monkeypatch.setattr(telemetry, "open", opener, raising=False)
    with pytest.raises(StorageError, match=r"cannot write the metrics at .*metrics.jsonl: the disk is full"):
        train(make_cfg(data, tmp_path))
    assert train_steps(tmp_path / "r") == [1]


def test_a_torn_last_metrics_line_does_not_stop_a_resume(reference, data, tmp_path):
    run = copy_run(reference, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step_6")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 7, "lo')  # the writer was killed mid-line
    with pytest.warns(UserWarning, match=r"metrics.jsonl:\d+: dropping a torn last line"):
        resumed = train(make_cfg(data, tmp_path, resume=True)).run_dir
    assert train_steps(resumed) == list(range(1, 7))
    assert weights_equal(reference, resumed)


def test_a_damaged_metrics_line_inside_the_file_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n}{{\n{"kind": "train", "step": 2}\n')
    with pytest.raises(TrainingError, match=r"metrics.jsonl:2 is not a JSON object"):
        read_metrics(path)


def test_a_nan_stop_names_the_checkpoint_that_is_really_good(data, tmp_path, monkeypatch):
    from parcae_lm.train.optim import MuonAdamW

    original = MuonAdamW.step
    calls = {"n": 0}

    def poisoned(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == 4:
            with torch.no_grad():
                self.adamw.param_groups[0]["params"][0].fill_(float("nan"))

    monkeypatch.setattr(MuonAdamW, "step", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite .*step 5 .*Last good checkpoint: .*step_3"):
        train(make_cfg(data, tmp_path))
    state = torch.load(tmp_path / "r" / "checkpoints" / "step_3" / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# ------------------------------------------------------------------------------------ files, locks


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EDQUOT, "the disk is full"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EACCES, "permission denied"),
        (errno.ENOTDIR, "a part of the path is a file"),
    ],
)
def test_write_failures_say_why_in_one_line(tmp_path, code, fragment):
    err = write_failure(OSError(code, os.strerror(code)), tmp_path / "x" / "f.json", "the summary")
    assert isinstance(err, StorageError) and isinstance(err, OSError)
    assert (
        str(err).startswith("cannot write the summary at ") and fragment in str(err) and "\n" not in str(err)
    )


def test_torch_save_failures_are_recognised_as_a_full_disk(tmp_path):
    err = write_failure(
        RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos"), tmp_path, "x", 1 << 60
    )
    assert "the disk is full" in str(err) and "needed" in str(err)


def test_an_atomic_write_below_a_file_is_a_storage_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match=r"f is a file, not a directory"):
        atomic_write_text(tmp_path / "f" / "g.json", "{}")


def test_an_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        atomic_write_text(disk / "a.json", "old")
        fill_disk(disk, leave_bytes=0)
        with pytest.raises(StorageError, match=r"cannot write file at .*a.json: the disk is full"):
            atomic_write_text(disk / "a.json", "x" * 100_000)
        assert (disk / "a.json").read_text() == "old"
        assert sorted(os.listdir(disk)) == ["a.json", "filler"]


def test_a_cache_lock_on_a_read_only_disk_is_a_storage_error(tmp_path):
    with (
        tmpfs(tmp_path / "ro", "1m", read_only=True) as disk,
        pytest.raises(StorageError, match=r"the file system is read-only"),
        file_lock(disk / ".entry.lock"),
    ):
        pass


# ----------------------------------------------------------------------------------- command line


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from parcae_lm.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--temperature", "-1"], "temperature must be ≥ 0, got -1.0"),
        (["--top_k", "0"], "top_k must be ≥ 1, got 0"),
        (["--top_p", "1.5"], "top_p must be in (0, 1], got 1.5"),
        (["--top_p", "0"], "top_p must be in (0, 1], got 0.0"),
        (["--max_new_tokens", "-5"], "max_new_tokens must be ≥ 0, got -5"),
        (["--recurrence", "-2"], "num_steps must be ≥ 1 for cached decoding, got -2"),
        (["--device", "gpu"], "unknown device 'gpu'"),
    ],
)
def test_cli_invalid_sampling_values_are_one_line_exit_1(reference, capsys, option, fragment):
    code, _, err = cli(["generate", str(reference), "ROMEO:", "--max_new_tokens", "5", *option], capsys)
    assert code == 1
    assert_one_line_error(err, fragment)


@pytest.mark.parametrize("value", ["nan", "inf", "warm"])
def test_cli_a_temperature_that_is_not_a_number_is_a_usage_error(reference, capsys, value):
    code, _, err = cli(["generate", str(reference), "--max_new_tokens", "5", "--temperature", value], capsys)
    assert code == 2
    assert_one_line_error(err, f"--temperature: expected float, got '{value}'")


def test_cli_generate_refuses_corrupted_weights_unless_allowed(reference, tmp_path, capsys):
    run = copy_run(reference, tmp_path)
    size = (run / "model.safetensors").stat().st_size
    _overwrite(run / "model.safetensors", size // 2, b"\xff" * 4096)
    code, out, err = cli(
        ["generate", str(run), "ROMEO:", "--max_new_tokens", "5", "--temperature", "0"], capsys
    )
    assert code == 1 and out == ""
    assert_one_line_error(err, "model.safetensors does not match the sha256 recorded in checksums.json")
    with pytest.warns(UserWarning, match="loading it anyway"):
        code, _, err = cli(
            ["generate", str(run), "ROMEO:", "--max_new_tokens", "5", "--allow_unverified"], capsys
        )
    assert code == 1  # sampling from NaN probabilities: a clear line, not a RuntimeError
    assert_one_line_error(err, "cannot sample: the model's next-token probabilities hold NaN or inf")


def test_cli_eval_bpb_refuses_shards_of_another_tokenizer(reference, data, other_tokenizer, tmp_path, capsys):
    argv = [
        "eval",
        "bpb",
        str(reference),
        "--shard_dir",
        str(data[1]),
        "--seq_len",
        "32",
        "--out",
        str(tmp_path),
    ]
    code, _, err = cli([*argv, "--tokenizer", str(other_tokenizer)], capsys)
    assert code == 1
    assert_one_line_error(err, "tokenizer mismatch: the shards in")
    assert os.listdir(tmp_path) == []  # no result written


def _train_argv(data, out: Path, *extra: str) -> list[str]:
    tok_dir, shard_dir = data
    return [
        "train", "--model_name", "parcae-micro", "--data.shard_dir", str(shard_dir),
        "--data.tokenizer_dir", str(tok_dir), "--data.seq_len", "32", "--train.micro_batch_size", "4",
        "--train.global_batch_size", "4", "--train.max_steps", "6", "--checkpoint.interval", "3",
        "--eval.interval", "3", "--eval.batches", "2", "--log.interval", "1", "--log.progress", "false",
        "--sample.prompts", '["ROMEO:"]', "--sample.tokens", "8", "--optim.muon_lr", "0.02",
        "--optim.adam_lr", "0.01", "--system.threads", "1", "--out_dir", str(out), "--run_name", "r", *extra,
    ]  # fmt: skip


def test_cli_train_with_another_tokenizer_writes_nothing(data, other_tokenizer, tmp_path, capsys):
    code, _, err = cli([*_train_argv(data, tmp_path), "--data.tokenizer_dir", str(other_tokenizer)], capsys)
    assert code == 1
    assert_one_line_error(err, "tokenizer mismatch")
    assert os.listdir(tmp_path) == []


def test_cli_train_into_a_directory_in_use(data, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    with exclusive_lock(tmp_path / "r" / ".lock", f"run directory {tmp_path / 'r'}"):
        code, _, err = cli(_train_argv(data, tmp_path), capsys)
    assert code == 1
    assert_one_line_error(err, f"is in use by pid {os.getpid()} on ")
    assert sorted(os.listdir(tmp_path / "r")) == [".lock"]


def test_cli_train_out_dir_is_a_file(data, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = cli(_train_argv(data, tmp_path / "f"), capsys)
    assert code == 1
    assert_one_line_error(err, "is a file, not a directory")


def test_cli_resume_never_runs_code_from_a_checkpoint(reference, data, tmp_path, capsys):
    run = copy_run(reference, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"trainer": Payload(marker)}, run / "checkpoints" / "step_6" / "state.pt")
    code, _, err = cli([*_train_argv(data, tmp_path), "--resume", "true"], capsys)
    assert code == 1
    assert_one_line_error(err, "cannot run code")
    assert not marker.exists()


def test_cli_a_mistyped_run_path(tmp_path, capsys, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["generate", "runs/ref3O"], capsys)
    assert code == 1
    assert_one_line_error(err, "model directory runs/ref3O does not exist")


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (["--system.device", "gpu"], 1, "system.device must be cpu, cuda, cuda:N, mps or null"),
        (["--run_name", ".."], 1, "run_name may only contain"),
        (["--train.max_steps", "nan"], 2, "--train.max_steps: expected int or null, got 'nan'"),
        (["--train.bogus", "1"], 2, "--train.bogus"),
    ],
)
def test_cli_bad_training_options(data, tmp_path, capsys, argv, code, fragment):
    got, _, err = cli([*_train_argv(data, tmp_path), *argv], capsys)
    assert got == code
    assert_one_line_error(err, fragment)
    assert os.listdir(tmp_path) == []


def test_cli_debug_shows_the_traceback(tmp_path):
    from parcae_lm.cli import main

    with pytest.raises(CheckpointError, match="does not exist"):
        main(["generate", str(tmp_path / "nope"), "--debug"])


def test_cli_ctrl_c_exits_130_and_the_run_resumes(data, tmp_path, capsys):
    argv = _train_argv(data, tmp_path)
    victim = subprocess.Popen(
        [sys.executable, "-m", "parcae_lm", *argv],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for((tmp_path / "r" / "checkpoints" / "step_3" / "state.pt").is_file, what="the first checkpoint")
    victim.send_signal(signal.SIGINT)
    _, err = victim.communicate(timeout=120)
    if victim.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert victim.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "summary.json").exists()
    code, _, _ = cli([*argv, "--resume", "true"], capsys)
    assert code == 0
    assert train_steps(tmp_path / "r") == list(range(1, 7))
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] == 6
