"""Validation loss and bits per byte with exact UTF-8 byte accounting.

A target token is *scored* when it is not padding (label -100) and stands for at least one byte of text
(`tokenizer.token_bytes()[id] > 0`). Special tokens (BOS/EOS/PAD) are 0 bytes, so predicting a BOS is
neither counted in the loss nor in the bytes: the model is charged only for the text itself. Then

    loss = Σ NLL (nats) / #scored tokens,   perplexity = e^loss,
    bpb  = Σ NLL (nats) / (ln 2 · Σ UTF-8 bytes of the scored target tokens).

(The reference sums nats over targets with bytes > 0 for the loss but divides by the bytes of all
targets for bpb; with 0-byte specials the two denominators agree, and dropping the BOS targets from the
numerator keeps bpb a property of the text rather than of the document boundaries.)

Two inputs: token shards written by `parcae data` (via `data.loader.iter_eval_batches`, each document masked
to itself through doc_ids) or raw text (each document = BOS + tokens, cut into windows of seq_len targets).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from parcae_lm.data.loader import iter_eval_batches
from parcae_lm.data.shards import check_shards
from parcae_lm.errors import EvalError
from parcae_lm.eval.common import EvalTokenizer, bos_token, forward_logits, model_device, pad_token
from parcae_lm.tokenizer import Tokenizer

IGNORE_INDEX = -100
Batch = tuple[torch.Tensor, ...]  # (x, y) or (x, y, doc_ids)


@dataclass
class BpbResult:
    depth: str
    loss: float
    perplexity: float
    bits_per_byte: float
    num_tokens: int
    num_bytes: int


@dataclass
class _Sums:
    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def result(self, depth: str) -> BpbResult:
        if self.tokens == 0 or self.bytes == 0:
            raise EvalError("no scored tokens: the evaluation data is empty (or only special tokens)")
        loss = self.nats / self.tokens
        return BpbResult(
            depth, loss, math.exp(loss), self.nats / (math.log(2) * self.bytes), self.tokens, self.bytes
        )


@torch.no_grad()
def batch_sums(
    model: torch.nn.Module,
    batch: Batch,
    token_bytes: torch.Tensor,
    num_steps: int | None,
) -> tuple[float, int, int]:
    """(Σ nats, #scored tokens, Σ bytes) of one batch."""
    device = model_device(model)
    x, y = batch[0].to(device), batch[1].to(device)
    doc_ids = batch[2].to(device) if len(batch) > 2 else None
    logits = forward_logits(model, x, num_steps, doc_ids=doc_ids)
    valid = y != IGNORE_INDEX
    nbytes = torch.where(valid, token_bytes.to(device)[y.clamp(min=0)], 0)
    scored = nbytes > 0
    nll = F.cross_entropy(logits.transpose(1, 2), y.clamp(min=0), reduction="none")
    return float((nll.double() * scored).sum()), int(scored.sum()), int(nbytes.sum())


def evaluate_bpb(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    token_bytes: torch.Tensor,
    *,
    depths: Sequence[int | None] = (None,),
    depth_names: Sequence[str] | None = None,
    max_tokens: int | None = None,
    total: int | None = None,
) -> list[BpbResult]:
    """Loss / perplexity / bpb at every depth, reading the data once (each batch runs at every depth)."""
    if max_tokens is not None and max_tokens < 1:
        raise EvalError(f"--max_tokens must be >= 1, got {max_tokens}")
    names = list(depth_names) if depth_names is not None else [str(d) for d in depths]
    sums = [_Sums() for _ in depths]
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="bpb", unit="batch", total=total):
            for s, depth in zip(sums, depths):
                nats, tokens, nbytes = batch_sums(model, batch, token_bytes, depth)
                s.nats, s.tokens, s.bytes = s.nats + nats, s.tokens + tokens, s.bytes + nbytes
            if max_tokens is not None and sums[0].tokens >= max_tokens:
                break
    finally:
        model.train(was_training)
    return [s.result(name) for s, name in zip(sums, names)]


# ------------------------------------------------------------------------------------------- inputs


def read_documents(path: Path) -> list[str]:
    """A .jsonl file gives one document per line (its "text" field); any other file is one document."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"text file not found: {path}")
    if path.suffix == ".jsonl":
        docs = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    obj = json.loads(line)
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise EvalError(f"{path}:{lineno}: expected an object with a string 'text' field")
                    docs.append(obj["text"])
    else:
        docs = [path.read_text(encoding="utf-8")]
    docs = [d for d in docs if d]
    if not docs:
        raise EvalError(f"{path}: no text")
    return docs


def text_batches(
    tokenizer: EvalTokenizer, documents: Sequence[str], seq_len: int, batch_size: int
) -> Iterator[Batch]:
    """Each document becomes BOS + tokens, cut into windows of `seq_len` targets (a window's first input is
    the previous window's last target). Every text token is a target exactly once."""
    if seq_len < 1 or batch_size < 1:
        raise EvalError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
    bos, pad = bos_token(tokenizer), pad_token(tokenizer)
    rows: list[tuple[list[int], list[int]]] = []
    for doc in documents:
        tokens = [bos, *tokenizer.encode(doc)]
        for start in range(0, len(tokens) - 1, seq_len):
            chunk = tokens[start : start + seq_len + 1]
            rows.append((chunk[:-1], chunk[1:]))
    for b in range(0, len(rows), batch_size):
        group = rows[b : b + batch_size]
        x = torch.full((len(group), seq_len), pad, dtype=torch.long)
        y = torch.full((len(group), seq_len), IGNORE_INDEX, dtype=torch.long)
        for i, (xs, ys) in enumerate(group):
            x[i, : len(xs)] = torch.tensor(xs)
            y[i, : len(ys)] = torch.tensor(ys)
        yield x, y


def count_text_windows(tokenizer: EvalTokenizer, documents: Sequence[str], seq_len: int) -> int:
    return sum(-(-len(tokenizer.encode(d)) // seq_len) for d in documents)


def check_byte_accounting(tokenizer: EvalTokenizer, documents: Sequence[str]) -> None:
    """token_bytes must add up to the exact UTF-8 length of the text, or bpb would be wrong."""
    tb = tokenizer.token_bytes()
    for i, doc in enumerate(documents):
        counted = int(tb[torch.tensor(tokenizer.encode(doc), dtype=torch.long)].sum()) if doc else 0
        actual = len(doc.encode("utf-8"))
        if counted != actual:
            raise EvalError(
                f"document {i}: the tokenizer's token_bytes add up to {counted} bytes but the text has {actual} "
                "UTF-8 bytes; bits-per-byte would be wrong with this tokenizer"
            )


def shard_batches(
    shard_dir: Path, split: str, seq_len: int, batch_size: int, tokenizer: Tokenizer
) -> Iterator[Batch]:
    """The split's batches (documents masked to themselves), once the shards are checked to come from
    `tokenizer` (shards of another tokenizer would give a wrong number, not an error)."""
    check_shards(shard_dir, tokenizer)  # now, not at the first next()
    return iter_eval_batches(shard_dir, split, batch_size, seq_len, with_doc_ids=True)


def results_to_json(results: list[BpbResult]) -> list[dict]:
    return [asdict(r) for r in results]
