"""What a finished run leaves in its directory besides checkpoints and metrics: the final model
(config.json + model.safetensors), samples.txt, summary.json, and the out_dir/latest link to it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from parcae_lm.config import ModelConfig
from parcae_lm.config.train import SampleArgs, Strategy
from parcae_lm.files import atomic_write_text
from parcae_lm.model import build_model

# The run directory's files, as summary.json lists them.
RUN_FILES = {
    "config": "config.yaml",
    "model": "model.safetensors",
    "tokenizer": "tokenizer",
    "checkpoints": "checkpoints",
    "metrics": "metrics.jsonl",
    "curves": "curves.png",
    "samples": "samples.txt",
    "summary": "summary.json",
}


def full_model(model: nn.Module, mcfg: ModelConfig, strategy: Strategy) -> nn.Module | None:
    """The unsharded model on rank 0 (a plain copy for FSDP, the module itself otherwise); a collective."""
    if strategy != Strategy.fsdp or not (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    ):
        return model
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:  # cpu_offload gathers the full state on rank 0 only
        return None
    full = build_model(mcfg)
    full.load_state_dict(sd)
    return full


@torch.no_grad()
def write_samples(
    model: nn.Module, tokenizer, cfg: SampleArgs, seed: int, path: Path
) -> list[dict[str, str]]:
    """Sample a continuation of each prompt (seeded by `seed` + its index) and write them to `path`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i, prompt in enumerate(cfg.prompts):
        ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]  # as in training: documents start with BOS
        gen = torch.Generator(device=device).manual_seed(seed + i)
        x = torch.tensor([ids], dtype=torch.long, device=device)
        y = model.generate(
            x,
            max_new_tokens=cfg.tokens,
            temperature=cfg.temperature,
            top_k=None,
            generator=gen,
            eos_id=tokenizer.eos_id,
        )
        out.append({"prompt": prompt, "text": prompt + tokenizer.decode(y[0, len(ids) :].tolist())})
    model.train(was_training)
    text = "".join(f"=== {s['prompt']!r} (temperature {cfg.temperature}) ===\n{s['text']}\n\n" for s in out)
    atomic_write_text(path, text)
    return out


def write_summary(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json: the given numbers plus the run directory and its files."""
    summary = {
        "run_dir": str(run_dir),
        **summary,
        "paths": {k: str(run_dir / v) for k, v in RUN_FILES.items()},
    }
    atomic_write_text(run_dir / RUN_FILES["summary"], json.dumps(summary, indent=2) + "\n")
    return summary


def point_latest(run_dir: Path) -> None:
    """`<out_dir>/latest` → the newest finished run (so `parcae generate runs/latest` always works)."""
    link, tmp = run_dir.parent / "latest", run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)  # atomic: readers see the old run or the new one, never nothing
