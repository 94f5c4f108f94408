"""Resumable training checkpoints: atomic, keep-last-K, everything needed for a bitwise-identical resume.

Layout: `<run>/checkpoints/step_<N>/` with
  state.pt     model + optimizer state (full, unsharded), counters, the model config, compatibility keys
  ranks.pt     per-rank data-loader position and RNG states (torch, CUDA, numpy, python)
A checkpoint is written into a hidden temp directory and renamed into place, so `step_<N>` exists only
when it is complete; a crash mid-write leaves the previous checkpoints untouched.
"""

from __future__ import annotations

import dataclasses
import os
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
from parcae_lm.files import replace_dir

_STEP_RE = re.compile(r"^step_(\d+)$")
FORMAT_VERSION = 1


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
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
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
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=f".tmp-step_{step}-"))
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
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _prune(ckpt_dir, keep_last_k)
    _barrier()
    return final


def _prune(ckpt_dir: Path, keep_last_k: int) -> None:
    found = list_checkpoints(ckpt_dir)
    for _, path in found[:-keep_last_k] if keep_last_k > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for p in ckpt_dir.iterdir():  # leftovers of crashed writes
        if p.name.startswith((".tmp-step_", ".old-step_")) and p.is_dir():
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
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        per_rank = torch.load(path / "ranks.pt", map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format_version')} != {FORMAT_VERSION}")
    check_compat(state["compat"], compat, path)
    if len(per_rank) != world_size:
        raise CheckpointError(
            f"{path} was written by {len(per_rank)} rank(s) but this run has {world_size}; the data position "
            "is per rank, so resume with the same world size"
        )
    try:
        set_model_state_dict(model, state["model"], options=_OPTS)
        set_optimizer_state_dict(model, optimizers, state["optimizer"], options=_OPTS)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: model/optimizer state does not fit this model: {e}") from e
    set_rng_state(per_rank[rank]["rng"])
    return state["trainer"], per_rank[rank]["loader"]


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
