"""What the experiment scripts share: their data, running their sweep file, writing their report.

An experiment is a sweep file (`<name>.yaml`: base run config + overrides + axes, and a `smoke` variant)
and a script of the same name (`<name>.py`) holding `analyse(result, context)`, which turns the sweep's results into
markdown and PNG figures. Running the script

    python experiments/<name>.py [--smoke] [--out DIR] [--set KEY=VALUE ...]

runs (or resumes: finished points are skipped) the sweep through `parcae_lm.scaling.runner.run_sweep`,
which trains every point with the library's `train`, then analyses it and writes DIR/report.md,
DIR/figures/*.png and, when the analysis produces fits, DIR/analysis.json. DIR defaults to
studies/<sweep name>.

The studies train on the default Shakespeare corpus with a shortened validation split (`study_data`):
the final evaluation of every point then costs seconds rather than minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import get_loader

from parcae_lm.data.corpus import shakespeare_corpus
from parcae_lm.data.default import prepare_default
from parcae_lm.data.shards import prepare
from parcae_lm.download import cache_dir
from parcae_lm.errors import ConfigError, ParcaeError
from parcae_lm.files import atomic_write_text, file_lock
from parcae_lm.scaling.runner import SweepResult, run_sweep
from parcae_lm.scaling.sweep import SweepSpec
from parcae_lm.scaling.table import json_safe
from parcae_lm.tokenizer import Tokenizer
from parcae_lm.train.telemetry import read_metrics

parse_value = get_loader("yaml")  # as `parcae train` reads a flag's value: 1e6 is a number
STUDY_VAL_CHARS = 800  # characters kept from the start of each work's validation tail (42 works, ~10k tokens)
STUDY_RECIPE = 1  # bump when the study split changes


def study_data(vocab_size: int = 4096, val_chars: int = STUDY_VAL_CHARS) -> tuple[Path, Path]:
    """(tokenizer_dir, shard_dir): the default Shakespeare corpus and tokenizer, with the validation split
    cut to the first `val_chars` characters (at a line end) of each work's validation tail. Cached."""
    tok_dir, _ = prepare_default(None, vocab_size, progress=False)
    out = cache_dir("prepared", f"shakespeare-v{vocab_size}-study-val{val_chars}")
    stamp = out / "prepared.json"
    # The default corpus's stamp hashes its text, tokenizer recipe and vocab: ours extends it.
    default_key = json.loads((Path(tok_dir).parent / "prepared.json").read_text()).get("key")
    key = {"recipe": STUDY_RECIPE, "default": default_key, "val_chars": val_chars}
    with file_lock(out / ".lock"):
        if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
            return out / "tokenizer", out / "shards"
        corpus = shakespeare_corpus()
        tok = Tokenizer.load(tok_dir)
        tok.save(out / "tokenizer")
        val = []
        for text in corpus.validation:
            cut = text[:val_chars]
            val.append(cut[: cut.rfind("\n") + 1] if "\n" in cut else cut)
        prepare(
            corpus.train,
            tok,
            out / "shards",
            val_docs=val,
            overwrite=True,
            description=[f"shakespeare (study split: first {val_chars} chars of each validation tail)"],
            progress=False,
        )
        atomic_write_text(stamp, json.dumps({"key": key}) + "\n")
    return out / "tokenizer", out / "shards"


@dataclass(frozen=True)
class Context:
    """What an analysis may need besides the results."""

    fig_dir: Path  # where its PNGs go
    data: (
        tuple[Path, Path] | None
    )  # (tokenizer_dir, shard_dir) the points trained on; None: generated problems
    smoke: bool  # the seconds-long variant: analyses shrink their own extra work too


@dataclass
class Report:
    markdown: str
    figures: list[Path]
    extra: dict[str, Any] = field(default_factory=dict)  # fits etc., written to analysis.json


Analysis = Callable[[SweepResult, Context], Report]


def train_curve(run_dir: str | Path) -> list[dict[str, Any]]:
    """The logged training records of a run (step, tokens, loss, state norm, spectral radius, ...)."""
    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("kind") == "train"]


def with_data(spec: SweepSpec, data: tuple[Path, Path]) -> SweepSpec:
    """The sweep, training on the given (tokenizer_dir, shard_dir)."""
    return spec.with_overrides({"data.tokenizer_dir": str(data[0]), "data.shard_dir": str(data[1])})


def run(
    sweep_file: str | Path,
    analyse: Analysis,
    out_dir: str | Path | None = None,
    *,
    smoke: bool = False,
    data: tuple[Path, Path] | None = None,
    overrides: dict[str, Any] | None = None,
    fig_dir: str | Path | None = None,
    progress: bool = True,
    text: bool = True,
) -> tuple[SweepResult, Report]:
    """Run (or resume) the sweep in `sweep_file`, analyse it, and write report.md (+ figures) to `out_dir`.

    `overrides` (dotted keys, e.g. {"train.max_steps": 1800}) change every point; a budget among them replaces
    the sweep's, and the sweep's axes cannot be overridden. `text=False`: the points train on generated
    problems (data.tasks), not on the study corpus."""
    spec = SweepSpec.from_yaml(sweep_file, smoke=smoke)
    if text:
        data = data or study_data()
        spec = with_data(spec, data)
    if overrides:
        spec = spec.with_overrides(overrides)
    out = Path(out_dir) if out_dir is not None else Path("studies") / spec.name
    result = run_sweep(spec, out, progress=progress)
    figs = Path(fig_dir) if fig_dir is not None else out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    report = analyse(result, Context(figs, data, smoke))

    # Paths relative to the report, so a study directory can be moved or committed as it is.
    def rel(path: Path) -> str:
        return Path(os.path.relpath(path, out)).as_posix()

    text = (
        f"# Study {spec.name}: {spec.description}\n\nResults table: {rel(result.csv)}\n\n{report.markdown}\n"
    )
    text += "".join(f"\n![{p.stem}]({rel(p)})\n" for p in report.figures)
    atomic_write_text(out / "report.md", text)
    if report.extra:
        atomic_write_text(out / "analysis.json", json.dumps(json_safe(report.extra), indent=2) + "\n")
    return result, report


def main(
    sweep_file: str | Path,
    analyse: Analysis,
    description: str,
    argv: Sequence[str] | None = None,
    text: bool = True,
) -> int:
    """The command line of an experiment script (`description`: its docstring, for --help)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the seconds-long variant (tiny model, a few steps)")
    p.add_argument("--out", type=Path, help="output directory (default: studies/<sweep name>)")
    p.add_argument("--figures", type=Path, help="directory for the PNG plots (default: OUT/figures)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a setting of every point (dotted keys, YAML values), e.g. --set train.max_steps=1800",
    )
    args = p.parse_args(argv)
    try:
        overrides = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
            overrides[key.strip()] = parse_value(value)
        result, report = run(
            sweep_file,
            analyse,
            args.out,
            smoke=args.smoke,
            overrides=overrides,
            fig_dir=args.figures,
            text=text,
        )
    except ParcaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.markdown)
    print(f"wrote {result.csv}\nwrote {result.out_dir / 'report.md'}")
    for f in report.figures:
        print(f"wrote {f}")
    return 0
