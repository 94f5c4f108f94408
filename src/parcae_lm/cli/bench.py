"""`parcae bench train|generate`: training and generation throughput on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from parcae_lm.bench.generate import bench_generate, format_table, load_model_or_default
from parcae_lm.bench.train import bench_config, bench_training
from parcae_lm.config import create_config
from parcae_lm.config.train import model_overrides
from parcae_lm.errors import ConfigError
from parcae_lm.files import atomic_write_text
from parcae_lm.model import CacheStrategy
from parcae_lm.runtime import matmul_peak_flops, resolve_device

BENCH_MODEL = "parcae-tiny"  # the named config bench_config starts from


def train(
    *,
    model_name: str | None = None,
    model: dict[str, Any] | None = None,
    batch_size: int = 4,
    seq_len: int = 256,
    steps: int = 6,
    warmup: int = 2,
    threads: int | None = None,
    compile: bool = False,
    plain_loss: bool = False,
    activation_checkpointing: bool = False,
    device: str = "auto",
    out: Path | None = None,
) -> None:
    """Forward+backward tok/s, MFU against the measured matmul peak, and peak memory.

    Args:
        model_name: Named model config (default: the model-library bench config, built on parcae-tiny).
        model: Overrides of the model config's fields, e.g. --model.mean_recurrence 8.
        batch_size: Sequences per step.
        seq_len: Tokens per sequence.
        steps: Timed steps.
        warmup: Untimed steps first.
        threads: CPU threads for torch (default: torch's choice).
        compile: torch.compile every block (inductor).
        plain_loss: Materialise the full logits instead of the chunked fused head.
        activation_checkpointing: Recompute each gradient iteration in the backward pass.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        out: Also write the result to this JSON file.
    """
    _set_threads(threads)
    overrides = model_overrides(model_name or BENCH_MODEL, model or {})
    cfg = bench_config(**overrides) if model_name is None else create_config(model_name, **overrides)
    r = bench_training(
        cfg,
        batch_size,
        seq_len,
        warmup,
        steps,
        str(resolve_device(device)),
        compile,
        not plain_loss,
        activation_checkpointing,
    )
    print(
        f"config        {r.config} ({r.params:,} params), batch {r.batch_size} × seq {r.seq_len}, {r.threads} threads"
    )
    print(f"throughput    {r.tokens_per_second:,.0f} tok/s fwd+bwd ({r.seconds_per_step:.3f} s/step)")
    print(f"core passes   {r.core_passes_per_step:.2f} per step")
    print(f"model FLOPs   {r.flops_per_token / 1e6:.1f} MFLOP/token → {r.achieved_flops / 1e9:.1f} GFLOP/s")
    print(f"matmul peak   {r.peak_flops / 1e9:.1f} GFLOP/s (median, measured after each step)")
    print(f"MFU           {100 * r.mfu:.1f}% (median of per-step ratios)")
    print(f"peak memory   {r.peak_memory_mb:,.0f} MB")
    if out is not None:
        atomic_write_text(out, json.dumps(r.to_dict(), indent=2) + "\n")
        print(f"wrote {out}")


def generate(
    model: str | None = None,
    /,
    *,
    prompt_len: int = 256,
    new_tokens: int = 256,
    batch_sizes: tuple[int, ...] = (1, 8),
    recurrence: int | None = None,
    threads: int | None = None,
    compile: bool = False,
    cache: str = "full",
    device: str = "auto",
    out: Path | None = None,
) -> None:
    """Prefill/decode tok/s, the FLOP limit and peak memory of cached generation.

    Args:
        model: A model/run directory (default: a random init of the bench config).
        prompt_len: Prompt tokens (random ids).
        new_tokens: Greedy decode steps timed after the prefill.
        batch_sizes: Batch sizes to measure, e.g. [1,8].
        recurrence: Test-time recurrence of a looped model (default: its mean_recurrence).
        threads: CPU threads for torch (default: torch's choice).
        compile: One static-shape compiled decode step (full cache only).
        cache: KV cache strategy: full, last, first-last or ring-N.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        out: Also write the results to this JSON file.
    """
    _set_threads(threads)
    if not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"--batch_sizes must be positive integers, e.g. [1,8], got {list(batch_sizes)}")
    strategy = CacheStrategy.parse(cache)
    lm, name = load_model_or_default(model, str(resolve_device(device)))
    peak = matmul_peak_flops(lm.device, seconds=2.0)
    results = [
        bench_generate(
            lm, prompt_len, new_tokens, b, recurrence, strategy, compile, peak_flops=peak, name=name
        )
        for b in batch_sizes
    ]
    r0 = results[0]
    print(
        f"{name}: {r0.params / 1e6:.2f}M params, prompt {prompt_len} + {new_tokens} new tokens, "
        f"recurrence {r0.num_steps}, cache {r0.cache_strategy}, {r0.threads} threads"
        f"{', compiled' if compile else ''}; matmul peak {peak / 1e9:.1f} GFLOP/s, "
        f"{r0.flops_per_token / 1e6:.1f} MFLOP/token"
    )
    print(format_table(results))
    for r in results:
        if r.compile_seconds is not None:
            print(f"batch {r.batch_size}: decode step compiled in {r.compile_seconds:.1f} s")
    if out is not None:
        atomic_write_text(out, json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        print(f"wrote {out}")


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
