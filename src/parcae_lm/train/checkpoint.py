"""Resumable training checkpoints: atomic, keep-last-K, everything needed for a bitwise-identical resume.

Layout: `<run>/checkpoints/step_<N>/` with
  state.pt     model + optimizer state (full, unsharded), counters, the model config, compatibility keys
  ranks.pt     per-rank data-loader position and RNG states (torch, CUDA, numpy, python)
Both hold only tensors and plain Python values (dicts, lists, tuples, numbers, strings), so they are read
with `torch.load(weights_only=True)`: a checkpoint file can never run code when it is loaded. A resume
refuses a checkpoint whose model or optimizer state holds NaN or inf.
A checkpoint is written into a hidden temp directory and renamed into place, so `step_<N>` exists only
when it is complete; a crash (or a full disk) mid-write leaves the previous checkpoints untouched.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from parcae_lm.errors import CheckpointError
from parcae_lm.files import ensure_dir, replace_dir, write_failure

_STEP_RE = re.compile(r"^step_(\d+)$")
FORMAT_VERSION = 2  # 2: loadable with weights_only=True (the numpy RNG state as a tensor)


@dataclass
class TrainerState:
    """The loop's counters, saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches done on this rank
    tokens: int = 0  # training tokens consumed, all ranks
    train_elapsed: float = 0.0  # seconds in the training loop, periodic evals and checkpoints included
    train_seconds: float | None = None  # the time budget, fixed at the first launch
    best_val_bpb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Checkpoints:
    """The checkpoints of one run: `dir`/step_<N>, the settings a resume must agree with, how many to keep."""

    dir: Path
    compat: dict[str, Any]
    keep_last_k: int

    def latest(self) -> Path | None:
        return latest_checkpoint(self.dir)

    def save(
        self, state: TrainerState, model: nn.Module, optimizers: list[torch.optim.Optimizer], loader
    ) -> Path:
        """A collective under torch.distributed: every rank must call it."""
        return save_checkpoint(
            self.dir,
            state.step,
            model,
            optimizers,
            state.to_dict(),
            loader.state_dict(),
            self.compat,
            self.keep_last_k,
        )

    def resume(
        self,
        path: Path,
        model: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        loader,
        rank: int,
        world_size: int,
    ) -> TrainerState:
        """Restore model, optimizer, RNG and `loader` position from `path`; returns the loop's counters."""
        trainer_state, loader_state = load_checkpoint(path, model, optimizers, self.compat, rank, world_size)
        loader.load_state_dict(loader_state)
        return TrainerState(**trainer_state)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (numpy's key array becomes an int64 tensor)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    out = []
    for p in ckpt_dir.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "state.pt").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def _fsync_write(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _gather(obj: Any) -> list[Any]:
    if dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


_OPTS = StateDictOptions(full_state_dict=True, cpu_offload=True)


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    trainer_state: dict[str, Any],
    loader_state: dict[str, Any],
    compat: dict[str, Any],
    keep_last_k: int,
) -> Path:
    """Write checkpoint `step` (a collective under torch.distributed: every rank must call it)."""
    model_sd = get_model_state_dict(model, options=_OPTS)
    optim_sd = get_optimizer_state_dict(model, optimizers, options=_OPTS)
    per_rank = _gather({"loader": loader_state, "rng": rng_state()})
    final = ckpt_dir / f"step_{step}"
    if _is_main():
        ensure_dir(ckpt_dir, "checkpoint directory")
        try:
            tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=f".tmp-step_{step}-"))
        except OSError as e:
            raise write_failure(e, final, f"checkpoint step {step}") from e
        try:
            _fsync_write(tmp / "ranks.pt", per_rank)
            state = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "model": model_sd,
                "optimizer": optim_sd,
                "trainer": trainer_state,
                "compat": compat,
            }
            _fsync_write(tmp / "state.pt", state)
            replace_dir(tmp, final)  # re-saving the same step swaps, never leaving a gap without a good copy
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            previous = latest_checkpoint(ckpt_dir)
            kept = f"; {previous} is intact" if previous else "; no earlier checkpoint exists"
            error = write_failure(e, final, f"checkpoint step {step}", _tensor_bytes([model_sd, optim_sd]))
            raise type(error)(f"{error}{kept}") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _prune(ckpt_dir, keep_last_k)
    _barrier()
    return final


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nest of dicts/lists/tuples (what a checkpoint needs on disk, roughly)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _prune(ckpt_dir: Path, keep_last_k: int) -> None:
    found = list_checkpoints(ckpt_dir)
    for _, path in found[:-keep_last_k] if keep_last_k > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for p in ckpt_dir.iterdir():  # leftovers of crashed writes (files.replace_dir names the old copy)
        leftover = p.name.startswith(".tmp-step_") or (p.name.startswith(".step_") and ".old-" in p.name)
        if leftover and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    compat: dict[str, Any],
    rank: int,
    world_size: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model/optimizer/RNG state; returns (trainer_state, this rank's loader state)."""
    state_file = path / "state.pt"
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a training checkpoint (no state.pt)")
    state = _read(state_file)
    if not isinstance(state, dict) or not set(state) >= _STATE_KEYS:
        raise CheckpointError(
            f"{state_file} is not a training checkpoint (expected keys {sorted(_STATE_KEYS)})"
        )
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {state.get('format_version')} != {FORMAT_VERSION} (written by another "
            "version of parcae-lm); resume it with that version, or start the run afresh"
        )
    check_compat(state["compat"], compat, path)
    per_rank = _read(path / "ranks.pt")
    if not isinstance(per_rank, list) or not all(
        isinstance(r, dict) and {"loader", "rng"} <= set(r) for r in per_rank
    ):
        raise CheckpointError(f"{path / 'ranks.pt'} does not hold per-rank loader and RNG states")
    if len(per_rank) != world_size:
        raise CheckpointError(
            f"{path} was written by {len(per_rank)} rank(s) but this run has {world_size}; the data position "
            "is per rank, so resume with the same world size"
        )
    trainer = state["trainer"]
    expected = {f.name for f in dataclasses.fields(TrainerState)}
    if not isinstance(trainer, dict) or set(trainer) != expected:
        raise CheckpointError(
            f"{state_file}: trainer counters {trainer!r} do not have the fields {sorted(expected)}"
        )
    _check_finite(path, {"model": state["model"], "optimizer": state["optimizer"]})
    try:
        set_model_state_dict(model, state["model"], options=_OPTS)
        set_optimizer_state_dict(model, optimizers, state["optimizer"], options=_OPTS)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: model/optimizer state does not fit this model: {e}") from e
    try:
        set_rng_state(per_rank[rank]["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path / 'ranks.pt'}: unreadable RNG state: {e}") from e
    return trainer, per_rank[rank]["loader"]


_STATE_KEYS = {"format_version", "step", "model", "optimizer", "trainer", "compat"}


def _read(file: Path) -> Any:
    """torch.load with weights_only=True: tensors and plain values only, never arbitrary objects."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing: the checkpoint is incomplete") from None
    except pickle.UnpicklingError as e:
        first = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"{file} holds objects other than tensors and plain values; it is refused so that loading it "
            f"cannot run code ({first})"
        ) from None
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(
            f"cannot read checkpoint file {file}: {' '.join(str(e).split())[:300]}"
        ) from None


def _check_finite(path: Path, tree: Any, key: str = "") -> None:
    """Refuse a checkpoint with a NaN or inf anywhere in its model or optimizer state."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            bad = int((~torch.isfinite(tree)).sum())
            earlier = [p for s, p in list_checkpoints(path.parent) if s < _step_of(path)]
            hint = f"delete it to resume from {earlier[-1]}" if earlier else "no earlier checkpoint remains"
            raise CheckpointError(
                f"checkpoint {path} holds {bad:,} non-finite value(s) (NaN/inf) in {key} and cannot be resumed "
                f"from; {hint}"
            )
    elif isinstance(tree, dict):
        for k, v in tree.items():
            _check_finite(path, v, f"{key}.{k}" if key else str(k))
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            _check_finite(path, v, f"{key}[{i}]")


def _step_of(path: Path) -> int:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else -1


def check_compat(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume when the model or the batch layout changed, naming every differing setting."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    diffs.append(f"{key}.{sub}: checkpoint {a.get(sub)!r} vs now {b.get(sub)!r}")
        elif a != b:
            diffs.append(f"{key}: checkpoint {a!r} vs now {b!r}")
    if diffs:
        raise CheckpointError(f"cannot resume from {path}: incompatible settings:\n  " + "\n  ".join(diffs))
