"""`parcae infer adaptive-eval|cache-eval|quantize|export|export-hf`: adaptive depth and KV-cache quality
sweeps, int8 quantization, export.

MODEL is a run / save_pretrained directory. Quality is validation bits per byte scored token by token
through the cache (`infer.quality`), on the first --batches × --batch_size windows of --seq_len tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch
from jsonargparse.typing import PositiveInt

from parcae_lm.checkpoint import from_pretrained, load_run
from parcae_lm.data.default import prepare_default
from parcae_lm.errors import ConfigError
from parcae_lm.files import atomic_write_text
from parcae_lm.infer.adaptive import ExitCriterion, ExitRule
from parcae_lm.infer.export import export_onnx, export_program, save_program
from parcae_lm.infer.quality import adaptive_sweep, plot_quality_compute, stepwise_bpb, validation_batches
from parcae_lm.model import CacheStrategy, LanguageModel
from parcae_lm.runtime import resolve_device

DEFAULT_STRATEGIES = ("full", "last", "first-last", "ring-2")


def adaptive_eval(
    model: str,
    /,
    *,
    thresholds: list[float],
    criterion: ExitCriterion = ExitCriterion.STATE,
    max_steps: PositiveInt | None = None,
    cache: str = "full",
    plot: Path | None = None,
    shard_dir: Path | None = None,
    tokenizer: Path | None = None,
    seq_len: PositiveInt = 128,
    batch_size: PositiveInt = 8,
    batches: PositiveInt = 2,
    threads: PositiveInt | None = None,
    allow_unverified: bool = False,
    device: str = "auto",
    out: Path | None = None,
) -> None:
    """Bits per byte vs mean iterations per token, over exit thresholds of an adaptive-depth rule.

    Args:
        model: A run / save_pretrained directory.
        thresholds: Exit thresholds τ to sweep, e.g. [0.01,0.02,0.05].
        criterion: What the threshold is compared with: state (relative change of the recurrent state),
            kl (KL divergence between successive predictions) or budget (fixed depth).
        max_steps: Iteration cap (default: the model's mean_recurrence).
        cache: KV cache strategy: full, last, first-last or ring-N.
        plot: Write the quality/compute curve to this PNG.
        shard_dir: Shard directory (default: the prepared Shakespeare shards).
        tokenizer: Tokenizer directory (default: MODEL/tokenizer).
        seq_len: Tokens per scored window.
        batch_size: Windows per batch.
        batches: Batches scored.
        threads: CPU threads for torch (default: torch's choice).
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        out: Write the results to this JSON file.
    """
    for t in thresholds:
        ExitRule(criterion, t, max_steps)  # validate every threshold before the long run
    strategy = CacheStrategy.parse(cache)
    lm, token_bytes, data = _setup(
        model, shard_dir, tokenizer, seq_len, batch_size, batches, threads, device, allow_unverified
    )
    t0 = time.time()
    results = adaptive_sweep(lm, data, token_bytes, criterion, thresholds, max_steps, strategy)
    base = next(r for r in results if r.label == f"fixed-{max_steps or lm.config.mean_recurrence}")
    print(f"{'rule':>14} {'bpb':>8} {'Δbpb':>7} {'mean iters':>10} {'of full':>7}")
    for r in results:
        delta = r.bits_per_byte / base.bits_per_byte - 1
        print(
            f"{r.label:>14} {r.bits_per_byte:>8.4f} {delta:>+7.2%} {r.mean_iterations:>10.3f} "
            f"{r.core_flops_fraction:>7.1%}"
        )
    print(f"{results[0].tokens} scored tokens per rule, cache {strategy}, {time.time() - t0:.0f} s")
    if plot is not None:
        plot_quality_compute(results, plot, f"adaptive depth ({criterion.value}), cache {strategy}")
        print(f"wrote {plot}")
    _write_json(out, [r.to_dict() for r in results])


def cache_eval(
    model: str,
    /,
    *,
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
    recurrence: PositiveInt | None = None,
    shard_dir: Path | None = None,
    tokenizer: Path | None = None,
    seq_len: PositiveInt = 128,
    batch_size: PositiveInt = 8,
    batches: PositiveInt = 2,
    threads: PositiveInt | None = None,
    allow_unverified: bool = False,
    device: str = "auto",
    out: Path | None = None,
) -> None:
    """Bits per byte and memory of KV-cache strategies, against the first one.

    Args:
        model: A run / save_pretrained directory.
        strategies: Cache strategies to compare: full, last, first-last, ring-N.
        recurrence: Test-time recurrence (default: the model's mean_recurrence).
        shard_dir: Shard directory (default: the prepared Shakespeare shards).
        tokenizer: Tokenizer directory (default: MODEL/tokenizer).
        seq_len: Tokens per scored window.
        batch_size: Windows per batch.
        batches: Batches scored.
        threads: CPU threads for torch (default: torch's choice).
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        out: Write the results to this JSON file.
    """
    parsed = [CacheStrategy.parse(s.strip()) for s in strategies if s.strip()]
    if not parsed:
        raise ConfigError("--strategies is empty")
    lm, token_bytes, data = _setup(
        model, shard_dir, tokenizer, seq_len, batch_size, batches, threads, device, allow_unverified
    )
    rule = ExitRule(threshold=0.0, max_steps=recurrence)
    results = [stepwise_bpb(lm, data, token_bytes, rule, s, str(s), progress=True) for s in parsed]
    base = results[0]
    print(f"{'cache':>11} {'bpb':>8} {'Δbpb':>7} {'KV MiB':>7} {'of ' + base.label:>8}")
    for r in results:
        print(
            f"{r.label:>11} {r.bits_per_byte:>8.4f} {r.bits_per_byte / base.bits_per_byte - 1:>+7.2%} "
            f"{r.kv_cache_bytes / 2**20:>7.2f} {r.kv_cache_bytes / base.kv_cache_bytes:>8.1%}"
        )
    print(f"{base.tokens} scored tokens, batch {batch_size} × {seq_len} positions")
    _write_json(out, [r.to_dict() for r in results])


def quantize(
    model: str,
    /,
    *,
    variants: tuple[Literal["fp32", "int8", "int4"], ...] = ("fp32", "int8"),
    new_tokens: PositiveInt = 64,
    shard_dir: Path | None = None,
    tokenizer: Path | None = None,
    seq_len: PositiveInt = 128,
    batch_size: PositiveInt = 8,
    batches: PositiveInt = 4,
    compile: bool | None = None,
    threads: PositiveInt | None = None,
    device: str = "auto",
    allow_unverified: bool = False,
    out: Path | None = None,
) -> None:
    """Weight-only quantisation (torchao): weight bytes, peak RSS, decode tok/s and bits per byte.

    Each variant is measured in a process of its own, so peak RSS compares; int4 needs CUDA.

    Args:
        model: A run / save_pretrained directory or a hub id.
        variants: Variants to measure, e.g. [fp32,int8] or [fp32,int8,int4].
        new_tokens: Decode steps timed at batch 1.
        shard_dir: Shard directory (default: the prepared Shakespeare shards).
        tokenizer: Tokenizer directory (default: MODEL/tokenizer).
        seq_len: Tokens per scored window.
        batch_size: Windows per batch.
        batches: Batches scored.
        compile: Also time the compiled decode step (default: where torch.compile works).
        threads: CPU threads for torch (default: torch's choice).
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
        out: Write the results to this JSON file.
    """
    from parcae_lm.bench.quantize import bench_variant  # torchao: the optional 'quant' extra

    if not variants:
        raise ConfigError("--variants is empty; give e.g. [fp32,int8]")
    if len(variants) == 1:
        lm, token_bytes, data = _setup(
            model, shard_dir, tokenizer, seq_len, batch_size, batches, threads, device, allow_unverified
        )
        rows = [bench_variant(lm, variants[0], data, token_bytes, new_tokens, compile).to_dict()]
    else:  # one process per variant: peak RSS is a process's
        rows = []
        for variant in variants:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [
                    sys.executable,
                    "-m",
                    "parcae_lm",
                    "infer",
                    "quantize",
                    model,
                    "--variants",
                    f"[{variant}]",
                ]
                cmd += [
                    "--new_tokens",
                    str(new_tokens),
                    "--seq_len",
                    str(seq_len),
                    "--batch_size",
                    str(batch_size),
                ]
                cmd += ["--batches", str(batches), "--device", device, "--out", str(Path(tmp, "r.json"))]
                for flag, value in (
                    ("--shard_dir", shard_dir),
                    ("--tokenizer", tokenizer),
                    ("--threads", threads),
                ):
                    if value is not None:
                        cmd += [flag, str(value)]
                if compile is not None:
                    cmd += ["--compile", str(compile).lower()]
                if allow_unverified:
                    cmd += ["--allow_unverified", "true"]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                    raise ConfigError(f"measuring {variant} failed: {last}")
                rows += json.loads(Path(tmp, "r.json").read_text())
    base = rows[0]
    print(
        f"{'variant':>8} {'bpb':>8} {'Δbpb':>7} {'weights MiB':>11} {'x fp32':>6} {'tok/s':>7} {'compiled':>8} {'RSS MiB':>7}"
    )
    for row in rows:
        fast = row["compiled_decode_tokens_per_second"]
        print(
            f"{row['variant']:>8} {row['bits_per_byte']:>8.4f} {row['bits_per_byte'] / base['bits_per_byte'] - 1:>+7.2%} "
            f"{row['weight_bytes'] / 2**20:>11.2f} {row['weight_bytes'] / base['weight_bytes']:>6.2f} "
            f"{row['decode_tokens_per_second']:>7.1f} {'-' if fast is None else f'{fast:.1f}':>8} "
            f"{row['peak_rss_mb']:>7.0f}"
        )
    _write_json(out, rows)


def export(
    model: str,
    out: Path,
    /,
    *,
    format: Literal["program", "onnx"] = "program",
    seq_len: PositiveInt = 128,
    recurrence: PositiveInt | None = None,
    allow_unverified: bool = False,
) -> None:
    """torch.export program (.pt2) or ONNX graph of the fixed-depth forward.

    Args:
        model: A run / save_pretrained directory.
        out: Output file.
        format: program (torch.export, .pt2) or onnx (needs the 'export' extra).
        seq_len: Sequence length the graph is traced for (the batch stays dynamic).
        recurrence: Test-time recurrence baked into the graph (default: the model's mean_recurrence).
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
    """
    lm = from_pretrained(model, allow_unverified=allow_unverified)
    if format == "onnx":
        path = export_onnx(lm, out, seq_len, recurrence)
    else:
        path = save_program(export_program(lm, seq_len, recurrence), out)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")


def export_hf(model: Path, out: Path, /) -> None:
    """Write a copy of a saved model loadable with transformers' AutoModelForCausalLM.

    Args:
        model: A run / save_pretrained directory.
        out: Output directory.
    """
    from parcae_lm.infer.hf import export_hf as write_hf_copy  # transformers: the optional 'hf' extra

    print(f"wrote {write_hf_copy(model, out)}")


# ---------------------------------------------------------------------------------------------- helpers


def _setup(
    model: str,
    shard_dir: Path | None,
    tokenizer: Path | None,
    seq_len: int,
    batch_size: int,
    batches: int,
    threads: int | None,
    device: str,
    allow_unverified: bool,
) -> tuple[LanguageModel, torch.Tensor, list]:
    if threads is not None:
        torch.set_num_threads(threads)
    run = load_run(
        model, device=resolve_device(device), tokenizer=tokenizer, allow_unverified=allow_unverified
    )
    lm = run.model
    if seq_len > lm.config.block_size:
        raise ConfigError(f"--seq_len {seq_len} exceeds the model's block_size={lm.config.block_size}")
    if shard_dir is None:
        _, shard_dir = prepare_default(vocab_size=lm.config.vocab_size, progress=False)
    data = validation_batches(shard_dir, seq_len, batch_size, batches, run.tokenizer)
    return lm, run.tokenizer.token_bytes(), data


def _write_json(path: Path | None, payload: list) -> None:
    if path is not None:
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")
