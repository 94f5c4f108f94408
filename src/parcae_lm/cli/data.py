"""`parcae data ...` and `parcae tokenizer ...`: corpora, tokenizer training, token shards.

Comparing a trained tokenizer with GPT-2 / GPT-4 / GPT-4o (bytes per token) is a separate tool:
`python tools/compare_tokenizers.py TOKENIZER_DIR` (needs `pip install -e ".[compare]"`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from parcae_lm.errors import DataError

if TYPE_CHECKING:
    from parcae_lm.data.shards import Manifest


def register(subparsers: argparse._SubParsersAction) -> None:
    from parcae_lm.data.corpus import CorpusName
    from parcae_lm.data.fineweb import FINEWEB_EDU_REPO, FineWebSample
    from parcae_lm.data.shards import DEFAULT_SHARD_TOKENS

    corpora = [c.value for c in CorpusName]

    data = subparsers.add_parser("data", help="corpora and tokenized shards")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = dsub.add_parser("prepare", help="tokenize documents into train/val shards")
    p.add_argument("--tokenizer", required=True, type=Path, help="tokenizer directory")
    p.add_argument("--out", required=True, type=Path, help="output shard directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", type=Path, help=".txt/.md, .jsonl, .parquet files or directories")
    src.add_argument("--corpus", choices=corpora, help="a built-in corpus (with its own validation split)")
    p.add_argument("--val-input", nargs="+", type=Path, help="validation documents (default: --val-fraction)")
    p.add_argument("--val-fraction", type=float, default=None, help="hold out this share of --input (0.01)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=_cmd_prepare)

    p = dsub.add_parser("default", help="Shakespeare + a tokenizer trained on it + shards (cached)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: in $PARCAE_CACHE)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.set_defaults(func=_cmd_default)

    p = dsub.add_parser("fetch-fineweb", help="download FineWeb-Edu sample parquet files from the hub")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sample", choices=[s.value for s in FineWebSample], default=FineWebSample.BT10.value)
    p.add_argument("--max-files", type=int, default=1, help="number of ~2 GB files (0 = all)")
    p.add_argument("--repo", default=FINEWEB_EDU_REPO)
    p.add_argument("--revision", default=None)
    p.set_defaults(func=_cmd_fetch_fineweb)

    p = dsub.add_parser("info", help="summarise a shard directory")
    p.add_argument("shard_dir", type=Path)
    p.set_defaults(func=_cmd_info)

    tok = subparsers.add_parser("tokenizer", help="train BPE tokenizers")
    tsub = tok.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    p = tsub.add_parser("train", help="train a byte-level BPE tokenizer")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True, type=Path)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", type=Path, help=".txt/.md, .jsonl, .parquet files or directories")
    src.add_argument("--corpus", choices=corpora, help="a built-in corpus (trains on its train split only)")
    p.add_argument("--max-chars", type=int, default=None, help="stop after this many characters of text")
    p.set_defaults(func=_cmd_tokenizer_train)


def _take_chars(docs: Iterable[str], max_chars: int | None) -> Iterator[str]:
    if max_chars is not None and max_chars < 1:
        raise DataError(f"--max-chars must be positive, got {max_chars}")
    total = 0
    for doc in docs:
        if max_chars is not None and total + len(doc) > max_chars:
            if max_chars - total > 0:
                yield doc[: max_chars - total]
            return
        total += len(doc)
        yield doc


def _cmd_prepare(args: argparse.Namespace) -> int:
    from parcae_lm.data.corpus import CorpusName, iter_documents, load_corpus
    from parcae_lm.data.shards import prepare

    if args.corpus:
        if args.val_input or args.val_fraction is not None:
            raise DataError("--corpus brings its own validation split; drop --val-input/--val-fraction")
        corpus = load_corpus(CorpusName(args.corpus))
        docs, val_docs, val_fraction, desc = corpus.train, corpus.validation, None, [f"corpus {corpus.name}"]
    else:
        if args.val_input and args.val_fraction is not None:
            raise DataError("give --val-input or --val-fraction, not both")
        docs = iter_documents(args.input)
        val_docs = iter_documents(args.val_input) if args.val_input else None
        val_fraction = None if args.val_input else (args.val_fraction or 0.01)
        desc = [str(p.resolve()) for p in args.input] + [f"val: {p.resolve()}" for p in args.val_input or []]
    t0 = time.perf_counter()
    m = prepare(
        docs,
        args.tokenizer,
        args.out,
        val_docs=val_docs,
        val_fraction=val_fraction,
        shard_tokens=args.shard_tokens,
        overwrite=args.overwrite,
        description=desc,
    )
    print(_summary(m, args.out))
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def _summary(m: Manifest, shard_dir: Path) -> str:
    lines = [f"{shard_dir}: {m.dtype} tokens, vocab {m.vocab_size}, tokenizer {m.tokenizer_sha256[:12]}"]
    for name, s in m.splits.items():
        lines.append(
            f"  {name:<5} {s.tokens:>14,} tokens {s.documents:>10,} docs {s.bytes:>15,} bytes "
            f"({s.bytes / max(s.tokens - s.documents, 1):.3f} bytes/token excl. BOS) in {len(s.shards)} shard(s)"
        )
    return "\n".join(lines)


def _cmd_default(args: argparse.Namespace) -> int:
    from parcae_lm.data.default import prepare_default
    from parcae_lm.data.shards import Manifest

    t0 = time.perf_counter()
    tokenizer_dir, shard_dir = prepare_default(args.out, args.vocab_size)
    print(f"tokenizer: {tokenizer_dir}")
    print(_summary(Manifest.load(shard_dir), shard_dir))
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def _cmd_fetch_fineweb(args: argparse.Namespace) -> int:
    from parcae_lm.data.fineweb import FineWebSample, fetch_fineweb_edu

    paths = fetch_fineweb_edu(
        args.out,
        FineWebSample(args.sample),
        args.max_files or None,
        repo_id=args.repo,
        revision=args.revision,
    )
    for p in paths:
        print(p)
    print(f"{len(paths)} file(s); next: parcae data prepare --tokenizer DIR --out SHARDS --input {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from parcae_lm.data.shards import Manifest

    m = Manifest.load(args.shard_dir)
    print(_summary(m, args.shard_dir))
    for s in m.sources:
        print(f"  source: {s}")
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from parcae_lm.data.corpus import CorpusName, iter_documents, load_corpus
    from parcae_lm.tokenizer import Tokenizer

    docs = load_corpus(CorpusName(args.corpus)).train if args.corpus else iter_documents(args.input)
    t0 = time.perf_counter()
    tok = Tokenizer.train(_take_chars(docs, args.max_chars), args.vocab_size, show_progress=True)
    tok.save(args.out)
    print(f"{tok} trained in {time.perf_counter() - t0:.1f}s, saved to {args.out}")
    return 0
