"""Byte-level BPE tokenizer (HF `tokenizers`) and its per-token byte lengths.

The recipe follows the reference: the GPT-4 split regex with numbers capped at two digits, then a byte-level
mapping (no regex of its own, no prefix space), a ByteLevel decoder, no normalizer, and the special tokens
`<|bos|>`, `<|eos|>`, `<|pad|>` at ids 0, 1, 2 followed by the 256 byte tokens. Encoding never turns literal
special-token text inside a document into a special id: specials are only added when asked for.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from parcae_lm.errors import TokenizerError
from parcae_lm.files import atomic_write_bytes, atomic_write_text

# GPT-4's split pattern, except that digit runs split into groups of at most two (`\p{N}{1,2}`).
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]  # trained first, so they get ids 0, 1, 2
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256
# Other conventions accepted when loading a bare tokenizer.json (GPT-2 style uses one token for both).
_FALLBACK_BOS = ["<|endoftext|>", "<s>"]
_FALLBACK_EOS = ["<|endoftext|>", "</s>"]
_FALLBACK_PAD = ["<pad>"]

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TOKEN_BYTES_FILE = "token_bytes.pt"

_BYTE_ALPHABET = frozenset(pre_tokenizers.ByteLevel.alphabet())


class Tokenizer:
    """A trained byte-level BPE with known bos/eos/pad ids."""

    def __init__(self, hf: HFTokenizer, *, bos: str, eos: str, pad: str):
        self._hf = hf
        # Text is text: a document that contains "<|bos|>" must not produce the BOS id.
        self._hf.encode_special_tokens = True
        ids = {}
        for role, token in (("bos", bos), ("eos", eos), ("pad", pad)):
            tid = hf.token_to_id(token)
            if tid is None:
                raise TokenizerError(f"{role} token {token!r} is not in the tokenizer's vocabulary")
            ids[role] = tid
        self._bos, self._eos, self._pad = bos, eos, pad
        self.bos_id: int = ids["bos"]
        self.eos_id: int = ids["eos"]
        self.pad_id: int = ids["pad"]

    # ------------------------------------------------------------------ construction
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, show_progress: bool = False) -> Tokenizer:
        """Train a byte-level BPE of exactly `vocab_size` tokens (fewer only if the text runs out of merges)."""
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise TokenizerError(f"vocab_size must be an int, got {vocab_size!r}")
        if vocab_size < MIN_VOCAB_SIZE:
            raise TokenizerError(
                f"vocab_size {vocab_size} is too small: need at least {MIN_VOCAB_SIZE} "
                f"({len(SPECIAL_TOKENS)} special tokens + 256 bytes)"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=0,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=SPECIAL_TOKENS,
            show_progress=show_progress,
        )
        stats = {"docs": 0, "chars": 0}

        def counted() -> Iterator[str]:
            for text in texts:
                if not isinstance(text, str):
                    raise TokenizerError(f"training texts must be str, got {type(text).__name__}")
                stats["docs"] += 1
                stats["chars"] += len(text)
                yield text

        hf.train_from_iterator(counted(), trainer)
        if stats["chars"] == 0:
            raise TokenizerError("no training text: the iterator was empty or held only empty strings")
        got = hf.get_vocab_size(with_added_tokens=True)
        if got < vocab_size:
            warnings.warn(
                f"the training text ({stats['chars']:,} chars) only supports {got} tokens; "
                f"asked for {vocab_size}",
                stacklevel=2,
            )
        return cls(hf, bos=BOS_TOKEN, eos=EOS_TOKEN, pad=PAD_TOKEN)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json` if present) from a directory.

        Without a config file (the reference's `tok_train.py` writes only tokenizer.json) the special
        tokens are found by their strings: `<|bos|>`/`<|eos|>`/`<|pad|>`, else `<|endoftext|>`-style ones.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise TokenizerError(f"tokenizer directory {directory} does not exist")
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"{directory} holds no {TOKENIZER_FILE}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"cannot parse {path}: {e}") from e
        config = {}
        config_path = directory / CONFIG_FILE
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise TokenizerError(f"cannot parse {config_path}: {e}") from e

        def pick(key: str, preferred: str, fallbacks: list[str], default: str | None = None) -> str:
            declared = config.get(key)
            if isinstance(declared, dict):  # HF AddedToken serialisation
                declared = declared.get("content")
            if declared:
                return declared
            for token in [preferred, *fallbacks]:
                if hf.token_to_id(token) is not None:
                    return token
            if default is not None:
                return default
            raise TokenizerError(
                f"{path}: no {key.removesuffix('_token')} token found (looked for {[preferred, *fallbacks]}); "
                f"add a {CONFIG_FILE} declaring {key}"
            )

        bos = pick("bos_token", BOS_TOKEN, _FALLBACK_BOS)
        eos = pick("eos_token", EOS_TOKEN, _FALLBACK_EOS)
        pad = pick("pad_token", PAD_TOKEN, _FALLBACK_PAD, default=eos)
        return cls(hf, bos=bos, eos=eos, pad=pad)

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json (HF-compatible, declares the specials) and token_bytes.pt."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / TOKENIZER_FILE, self._hf.to_str(pretty=True))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self._bos,
            "eos_token": self._eos,
            "pad_token": self._pad,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        }
        atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        buf = io.BytesIO()
        torch.save(self.token_bytes().to(torch.int32), buf)
        atomic_write_bytes(directory / TOKEN_BYTES_FILE, buf.getvalue())
        return directory

    # ------------------------------------------------------------------ encoding
    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects a str, got {type(text).__name__}")
        ids = self._hf.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, bos, eos)

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        """Encode many texts at once (parallel in Rust; `TOKENIZERS_PARALLELISM`/`RAYON_NUM_THREADS` apply)."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TokenizerError(f"encode_batch expects str items, item {i} is {type(text).__name__}")
        batch = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)
        return [self._wrap(e.ids, bos, eos) for e in batch(texts, add_special_tokens=False)]

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        return self._hf.decode(ids, skip_special_tokens=skip_special)

    def id_to_token(self, token_id: int) -> str | None:
        return self._hf.id_to_token(token_id)

    # ------------------------------------------------------------------ metadata
    def token_bytes(self) -> torch.LongTensor:
        """Number of UTF-8 bytes each token stands for (0 for special/added tokens).

        In a byte-level vocabulary every character of a token string is one byte, so this is exact, also
        for tokens holding part of a multi-byte character. Summing it over `encode(text)` gives
        `len(text.encode())`, which is what bits-per-byte needs.
        """
        added = set(self._hf.get_added_tokens_decoder())
        out = torch.zeros(self.vocab_size, dtype=torch.long)
        for token, tid in self._hf.get_vocab(with_added_tokens=True).items():
            if tid in added:
                continue
            if not _BYTE_ALPHABET.issuperset(token):
                raise TokenizerError(f"token {tid} ({token!r}) is not byte-level; cannot count its bytes")
            out[tid] = len(token)
        return out

    def fingerprint(self) -> str:
        """sha256 of the serialized tokenizer and its special tokens: equal fingerprints encode identically."""
        h = hashlib.sha256(self._hf.to_str().encode("utf-8"))
        h.update(f"\0{self._bos}\0{self._eos}\0{self._pad}".encode())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, pad_id={self.pad_id})"
        )
