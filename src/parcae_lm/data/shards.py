"""Tokenized shards: flat binary token files plus a manifest, written atomically and memory-mapped on read.

Layout of a shard directory:
    manifest.json           dtype, vocab/special ids, tokenizer fingerprint, per split: shard files with
                            token counts, number of documents and total UTF-8 bytes (for bits per byte)
    train_000000.bin ...    raw little-endian uint16 (vocab <= 65536) or uint32 token ids
    val_000000.bin ...

Every document is preceded by BOS, so a split is one stream `BOS d0 BOS d1 ...`: documents stay separable
(the loader derives document ids from it) and a model learns where documents start. A split is the
concatenation of its shards; documents may straddle shard boundaries.

Shards are only meaningful with the tokenizer that wrote them: every consumer (training, `eval bpb`, the
inference-quality sweeps) opens them through `check_shards`, which compares the manifest's tokenizer
fingerprint with the model's or run's tokenizer. Every read checks that its ids lie inside the manifest's
vocabulary, so a corrupted shard fails with the file's name instead of indexing past an embedding table.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from parcae_lm.errors import DataError
from parcae_lm.files import atomic_write_text, replace_dir
from parcae_lm.tokenizer import Tokenizer

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DEFAULT_SHARD_TOKENS = 1 << 27  # 128M tokens = 256 MB as uint16
DEFAULT_BATCH_DOCS = 256


class Split(Enum):
    TRAIN = "train"
    VAL = "val"


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id of a `vocab_size` vocabulary."""
    if vocab_size < 1:
        raise DataError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise DataError(f"vocab_size {vocab_size} does not fit in uint32 token shards (max 2^32)")


@dataclass(frozen=True)
class ShardInfo:
    file: str
    tokens: int


@dataclass
class SplitInfo:
    shards: list[ShardInfo] = field(default_factory=list)
    tokens: int = 0
    documents: int = 0
    bytes: int = 0  # UTF-8 bytes of the documents' text (BOS excluded)


@dataclass
class Manifest:
    dtype: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    tokenizer_sha256: str
    tokenizer_dir: str | None
    splits: dict[str, SplitInfo]
    sources: list[str]
    format_version: int = FORMAT_VERSION

    def split(self, split: Split | str) -> SplitInfo:
        name = _split(split).value
        if name not in self.splits:
            raise DataError(f"the shards have no {name!r} split (have {list(self.splits)})")
        return self.splits[name]

    def check_tokenizer(self, tokenizer: Tokenizer, shard_dir: str | Path | None = None) -> None:
        """Raise unless `tokenizer` is the one these shards were written with."""
        if tokenizer.fingerprint() != self.tokenizer_sha256:
            where = f"the shards in {shard_dir}" if shard_dir is not None else "the shards"
            origin = f", from {self.tokenizer_dir}" if self.tokenizer_dir else ""
            raise DataError(
                f"tokenizer mismatch: {where} were written with tokenizer {self.tokenizer_sha256[:12]} "
                f"(vocab {self.vocab_size}{origin}), but the given tokenizer is "
                f"{tokenizer.fingerprint()[:12]} (vocab {tokenizer.vocab_size}); re-tokenize the corpus with "
                "this tokenizer (`parcae data prepare`) or use the tokenizer the shards were made with"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def load(cls, shard_dir: str | Path) -> Manifest:
        path = Path(shard_dir) / MANIFEST
        if not path.is_file():
            raise DataError(
                f"{shard_dir} is not a shard directory: no {MANIFEST} (run `parcae data prepare`)"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format_version") != FORMAT_VERSION:
                raise DataError(
                    f"{path}: format_version {raw.get('format_version')}, expected {FORMAT_VERSION}"
                )
            raw["splits"] = {
                name: SplitInfo(
                    shards=[ShardInfo(**s) for s in info["shards"]],
                    tokens=info["tokens"],
                    documents=info["documents"],
                    bytes=info["bytes"],
                )
                for name, info in raw["splits"].items()
            }
            manifest = cls(**raw)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path} is not a valid shard manifest: {e}") from e
        manifest._validate(path)
        return manifest

    def _validate(self, path: Path) -> None:
        if not isinstance(self.vocab_size, int) or isinstance(self.vocab_size, bool) or self.vocab_size < 1:
            raise DataError(f"{path}: vocab_size must be a positive integer, got {self.vocab_size!r}")
        if self.dtype not in ("uint16", "uint32") or np.dtype(self.dtype) != token_dtype(self.vocab_size):
            raise DataError(
                f"{path}: dtype {self.dtype!r} does not match vocab_size {self.vocab_size} "
                f"(expected {token_dtype(self.vocab_size).name})"
            )
        for name in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise DataError(
                    f"{path}: {name} {value!r} is not an id of the {self.vocab_size}-token vocabulary"
                )


def check_shards(shard_dir: str | Path, tokenizer: Tokenizer) -> Manifest:
    """The manifest of `shard_dir`, after checking that its shards were written by `tokenizer`."""
    manifest = Manifest.load(shard_dir)
    manifest.check_tokenizer(tokenizer, shard_dir)
    return manifest


def _split(split: Split | str) -> Split:
    try:
        return Split(split) if not isinstance(split, Split) else split
    except ValueError:
        raise DataError(f"unknown split {split!r}; expected one of {[s.value for s in Split]}") from None


# ---------------------------------------------------------------------- writing


class _ShardWriter:
    """Appends token arrays to fixed-size shard files of one split; each file is renamed into place when full."""

    def __init__(self, directory: Path, split: Split, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        self.dtype = dtype.newbyteorder("<")  # shards are little-endian on every host
        self.info = SplitInfo()
        self._file = None
        self._filled = 0
        self._limit = np.iinfo(dtype).max

    @property
    def tokens_written(self) -> int:
        return self.info.tokens + self._filled

    def write(self, tokens: np.ndarray, documents: int, n_bytes: int) -> None:
        if tokens.size and (tokens.min() < 0 or tokens.max() > self._limit):
            raise DataError(
                f"token id {int(tokens.max())} does not fit in {self.dtype.name} shards "
                f"(max {self._limit}); the tokenizer's vocab_size is wrong"
            )
        tokens = tokens.astype(self.dtype, copy=False)
        self.info.documents += documents
        self.info.bytes += n_bytes
        while tokens.size:
            if self._file is None:
                name = f"{self.split.value}_{len(self.info.shards):06d}.bin"
                # stays open across write() calls until the shard is full
                self._file = (name, open(self.directory / name, "wb"))  # noqa: SIM115
            take = tokens[: self.shard_tokens - self._filled]
            take.tofile(self._file[1])
            self._filled += take.size
            tokens = tokens[take.size :]
            if self._filled == self.shard_tokens:
                self._close_shard()

    def _close_shard(self) -> None:
        name, f = self._file
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self.info.shards.append(ShardInfo(name, self._filled))
        self.info.tokens += self._filled
        self._file, self._filled = None, 0

    def close(self) -> SplitInfo:
        if self._file is not None:
            self._close_shard()
        return self.info


def _batches(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    batch = []
    for doc in docs:
        if not isinstance(doc, str):
            raise DataError(f"documents must be str, got {type(doc).__name__}")
        if doc:
            batch.append(doc)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def _is_val(index: int, fraction: float) -> bool:
    # Spreads held-out documents evenly: exactly floor(n * fraction) of the first n documents.
    return int((index + 1) * fraction) > int(index * fraction)


def prepare(
    sources: Iterable[str],
    tokenizer: Tokenizer | str | Path,
    out_dir: str | Path,
    *,
    val_fraction: float | None = None,
    val_docs: Iterable[str] | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    batch_docs: int = DEFAULT_BATCH_DOCS,
    overwrite: bool = False,
    description: Sequence[str] = (),
    progress: bool = True,
) -> Manifest:
    """Tokenize documents into train/val shards under `out_dir` (written to a temp dir, then renamed).

    The validation split is either `val_docs`, or every document whose running index crosses a multiple of
    1/`val_fraction` (deterministic, evenly spread). `description` is recorded in the manifest's `sources`.
    """
    if (val_fraction is None) == (val_docs is None):
        raise DataError("give exactly one of val_fraction or val_docs")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if shard_tokens < 1 or batch_docs < 1:
        raise DataError(f"shard_tokens and batch_docs must be positive, got {shard_tokens}, {batch_docs}")
    tokenizer_dir = None
    if not isinstance(tokenizer, Tokenizer):
        tokenizer_dir = str(Path(tokenizer).resolve())
        tokenizer = Tokenizer.load(tokenizer)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(
            f"{out_dir} already exists and is not empty (use overwrite=True / --overwrite to replace it)"
        )
    dtype = token_dtype(tokenizer.vocab_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    bar = tqdm(desc=f"tokenizing -> {out_dir.name}", unit="B", unit_scale=True, disable=not progress)
    try:
        writers = {s: _ShardWriter(tmp, s, dtype, shard_tokens) for s in Split}
        docs_done = 0

        def encode_into(split: Split, batch: list[str]) -> None:
            nonlocal docs_done
            ids = tokenizer.encode_batch(batch, bos=True)
            tokens = np.concatenate([np.asarray(doc, dtype=np.int64) for doc in ids])
            n_bytes = sum(len(d.encode("utf-8")) for d in batch)
            writers[split].write(tokens, len(batch), n_bytes)
            docs_done += len(batch)
            bar.update(n_bytes)
            bar.set_postfix(
                docs=f"{docs_done:,}", tokens=f"{sum(w.tokens_written for w in writers.values()):,}"
            )

        index = 0
        for batch in _batches(sources, batch_docs):
            if val_fraction is None:
                encode_into(Split.TRAIN, batch)
                continue
            parts: dict[Split, list[str]] = {Split.TRAIN: [], Split.VAL: []}
            for doc in batch:
                parts[Split.VAL if _is_val(index, val_fraction) else Split.TRAIN].append(doc)
                index += 1
            for split, docs in parts.items():
                if docs:
                    encode_into(split, docs)
        if val_docs is not None:
            for batch in _batches(val_docs, batch_docs):
                encode_into(Split.VAL, batch)
        bar.close()
        splits = {s.value: w.close() for s, w in writers.items()}
        for name, info in splits.items():
            if info.documents == 0:
                raise DataError(
                    f"the {name} split is empty"
                    + (" (too few documents for val_fraction)" if val_fraction and name == "val" else "")
                )
        manifest = Manifest(
            dtype=dtype.name,
            vocab_size=tokenizer.vocab_size,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            tokenizer_sha256=tokenizer.fingerprint(),
            tokenizer_dir=tokenizer_dir,
            splits=splits,
            sources=list(description),
        )
        atomic_write_text(tmp / MANIFEST, manifest.to_json())
        replace_dir(tmp, out_dir)
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ---------------------------------------------------------------------- reading


class TokenStream:
    """One split as a single read-only token sequence over memory-mapped shard files."""

    def __init__(self, shard_dir: str | Path, split: Split | str):
        shard_dir = Path(shard_dir)
        self.manifest = Manifest.load(shard_dir)
        self.split = _split(split)
        info = self.manifest.split(self.split)
        dtype = np.dtype(self.manifest.dtype).newbyteorder("<")
        self._maps: list[np.memmap] = []
        self._files: list[Path] = []
        for shard in info.shards:
            path = shard_dir / shard.file
            if not path.is_file():
                raise DataError(f"shard {path} listed in the manifest is missing")
            size = path.stat().st_size
            if size != shard.tokens * dtype.itemsize:
                raise DataError(
                    f"shard {path} has {size} bytes, the manifest says {shard.tokens} {dtype.name} tokens"
                )
            self._maps.append(np.memmap(path, dtype=dtype, mode="r", shape=(shard.tokens,)))
            self._files.append(path)
        self._starts = np.cumsum([0] + [m.shape[0] for m in self._maps])
        self.info = info

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as int64, across shard boundaries."""
        if not 0 <= start <= stop <= len(self):
            raise DataError(
                f"read [{start}, {stop}) outside the {self.split.value} split of {len(self)} tokens"
            )
        if start == stop:
            return np.empty(0, dtype=np.int64)
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        out, pos = [], start
        while pos < stop:
            m, base = self._maps[first], int(self._starts[first])
            end = min(stop, base + m.shape[0])
            chunk = np.asarray(m[pos - base : end - base], dtype=np.int64)
            if chunk.max() >= self.manifest.vocab_size:  # unsigned: never below 0
                i = int(np.argmax(chunk >= self.manifest.vocab_size))
                raise DataError(
                    f"shard {self._files[first]} holds token id {int(chunk[i])} at token {pos - base + i}, "
                    f"outside the {self.manifest.vocab_size}-token vocabulary of its manifest: the shard is "
                    "corrupted"
                )
            out.append(chunk)
            pos, first = end, first + 1
        return np.concatenate(out) if len(out) != 1 else out[0]
