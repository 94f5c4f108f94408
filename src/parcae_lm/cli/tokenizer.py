"""`parcae tokenizer train`: byte-level BPE tokenizers."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from jsonargparse.typing import PositiveInt

from parcae_lm.cli.command import UsageError
from parcae_lm.data.corpus import CorpusName, iter_documents, load_corpus
from parcae_lm.tokenizer import Tokenizer


def train(
    *,
    vocab_size: int,
    out: Path,
    input: list[Path] | Path | None = None,
    corpus: CorpusName | None = None,
    max_chars: PositiveInt | None = None,
) -> None:
    """Train a byte-level BPE tokenizer.

    Args:
        vocab_size: Vocabulary size, special tokens included.
        out: Output tokenizer directory.
        input: A .txt/.md, .jsonl or .parquet file or directory, or a list of them [a,b] (or give --corpus).
        corpus: A built-in corpus; trains on its train split only (or give --input).
        max_chars: Stop after this many characters of text.
    """
    if (input is None) == (corpus is None):
        raise UsageError("give exactly one of --input and --corpus")
    if corpus is not None:
        docs = load_corpus(corpus).train
    else:
        docs = iter_documents([input] if isinstance(input, Path) else list(input))
    t0 = time.perf_counter()
    tok = Tokenizer.train(_take_chars(docs, max_chars), vocab_size, show_progress=True)
    tok.save(out)
    print(f"{tok} trained in {time.perf_counter() - t0:.1f}s, saved to {out}")


def _take_chars(docs: Iterable[str], max_chars: int | None) -> Iterator[str]:
    total = 0
    for doc in docs:
        if max_chars is not None and total + len(doc) > max_chars:
            if max_chars - total > 0:
                yield doc[: max_chars - total]
            return
        total += len(doc)
        yield doc
