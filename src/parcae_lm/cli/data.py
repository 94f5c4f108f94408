"""`parcae data prepare|default|fetch-fineweb|info`: corpora and token shards.

Comparing a trained tokenizer with GPT-2 / GPT-4 / GPT-4o (bytes per token) is a separate tool:
`python tools/compare_tokenizers.py TOKENIZER_DIR` (needs `pip install -e ".[compare]"`).
"""

from __future__ import annotations

import time
from pathlib import Path

from jsonargparse.typing import PositiveInt

from parcae_lm.cli.command import UsageError
from parcae_lm.data.corpus import CorpusName, iter_documents, load_corpus
from parcae_lm.data.default import prepare_default
from parcae_lm.data.fineweb import FINEWEB_EDU_REPO, FineWebSample, fetch_fineweb_edu
from parcae_lm.data.shards import DEFAULT_SHARD_TOKENS, Manifest
from parcae_lm.data.shards import prepare as prepare_shards


def prepare(
    *,
    tokenizer: Path,
    out: Path,
    input: list[Path] | Path | None = None,
    corpus: CorpusName | None = None,
    val_input: list[Path] | Path | None = None,
    val_fraction: float | None = None,
    shard_tokens: PositiveInt = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
) -> None:
    """Tokenize documents into train/val shards.

    Args:
        tokenizer: Tokenizer directory.
        out: Output shard directory.
        input: A .txt/.md, .jsonl or .parquet file or directory, or a list of them [a,b] (or give --corpus).
        corpus: A built-in corpus, with its own validation split (or give --input).
        val_input: Validation documents, like --input (default: hold out --val_fraction of --input).
        val_fraction: Share of --input held out for validation (default 0.01).
        shard_tokens: Tokens per shard file.
        overwrite: Replace an existing output directory.
    """
    if (input is None) == (corpus is None):
        raise UsageError("give exactly one of --input and --corpus")
    if corpus is not None:
        if val_input is not None or val_fraction is not None:
            raise UsageError("--corpus brings its own validation split; drop --val_input/--val_fraction")
        c = load_corpus(corpus)
        docs, val_docs, fraction, desc = c.train, c.validation, None, [f"corpus {c.name}"]
    else:
        if val_input is not None and val_fraction is not None:
            raise UsageError("give --val_input or --val_fraction, not both")
        inputs, val_inputs = _paths(input), _paths(val_input)
        docs = iter_documents(inputs)
        val_docs = iter_documents(val_inputs) if val_inputs else None
        fraction = None if val_inputs else (val_fraction or 0.01)
        desc = [str(p.resolve()) for p in inputs] + [f"val: {p.resolve()}" for p in val_inputs]
    t0 = time.perf_counter()
    m = prepare_shards(
        docs,
        tokenizer,
        out,
        val_docs=val_docs,
        val_fraction=fraction,
        shard_tokens=shard_tokens,
        overwrite=overwrite,
        description=desc,
    )
    print(summary(m, out))
    print(f"done in {time.perf_counter() - t0:.1f}s")


def default(*, out: Path | None = None, vocab_size: PositiveInt = 4096) -> None:
    """Shakespeare, a tokenizer trained on it and its shards (cached).

    Args:
        out: Output directory (default: in $PARCAE_CACHE).
        vocab_size: Tokenizer vocabulary size.
    """
    t0 = time.perf_counter()
    tokenizer_dir, shard_dir = prepare_default(out, vocab_size)
    print(f"tokenizer: {tokenizer_dir}")
    print(summary(Manifest.load(shard_dir), shard_dir))
    print(f"done in {time.perf_counter() - t0:.1f}s")


def fetch_fineweb(
    *,
    out: Path,
    sample: FineWebSample = FineWebSample.BT10,
    max_files: int = 1,
    repo: str = FINEWEB_EDU_REPO,
    revision: str | None = None,
) -> None:
    """Download FineWeb-Edu sample parquet files from the hub.

    Args:
        out: Directory for the parquet files.
        sample: The published sample to take files from.
        max_files: Number of ~2 GB files (0: all of the sample's).
        repo: Hub dataset repository.
        revision: Hub revision (default: the newest).
    """
    paths = fetch_fineweb_edu(out, sample, max_files or None, repo_id=repo, revision=revision)
    for p in paths:
        print(p)
    print(f"{len(paths)} file(s); next: parcae data prepare --tokenizer DIR --out SHARDS --input {out}")


def info(shard_dir: Path, /) -> None:
    """Summarise a shard directory: tokens, documents and bytes per split, and the sources.

    Args:
        shard_dir: Shard directory written by `parcae data prepare`.
    """
    m = Manifest.load(shard_dir)
    print(summary(m, shard_dir))
    for s in m.sources:
        print(f"  source: {s}")


def summary(m: Manifest, shard_dir: Path) -> str:
    lines = [f"{shard_dir}: {m.dtype} tokens, vocab {m.vocab_size}, tokenizer {m.tokenizer_sha256[:12]}"]
    for name, s in m.splits.items():
        lines.append(
            f"  {name:<5} {s.tokens:>14,} tokens {s.documents:>10,} docs {s.bytes:>15,} bytes "
            f"({s.bytes / max(s.tokens - s.documents, 1):.3f} bytes/token excl. BOS) in {len(s.shards)} shard(s)"
        )
    return "\n".join(lines)


def _paths(value: list[Path] | Path | None) -> list[Path]:
    return [] if value is None else [value] if isinstance(value, Path) else list(value)
