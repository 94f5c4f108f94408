"""Synthetic verse: a small BPE and train/val token shards for tests that train or plan runs."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = [
    "king",
    "queen",
    "lord",
    "love",
    "death",
    "night",
    "day",
    "sword",
    "crown",
    "blood",
    "heart",
    "fair",
    "sweet",
    "good",
    "noble",
    "grace",
    "honour",
]


def verse_shards(root: Path, train_docs: int, val_lines: int, vocab_size: int) -> tuple[Path, Path]:
    """Write root/tokenizer and root/shards from seeded speaker-tagged verse; returns both paths."""
    from parcae_lm.data.shards import prepare
    from parcae_lm.tokenizer import Tokenizer

    rng = random.Random(0)

    def doc(n_lines: int = 60) -> str:
        lines = []
        for _ in range(n_lines):
            speaker = rng.choice(["ROMEO", "JULIET", "KING", "NURSE"])
            lines.append(
                f"{speaker}:\n" + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + ".\n"
            )
        return "\n".join(lines)

    train, val = [doc() for _ in range(train_docs)], [doc(val_lines)]
    tok = Tokenizer.train(train, vocab_size)
    tok.save(root / "tokenizer")
    prepare(train, tok, root / "shards", val_docs=val, progress=False)
    return root / "tokenizer", root / "shards"
