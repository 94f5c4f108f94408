"""Batches of (input, target) windows from token shards, for training (shuffled, sharded by rank, resumable)
and for evaluation (every token once, in order).

A split is one token stream; window i is tokens [i*T, i*T + T + 1): inputs are its first T tokens and targets
its last T, so consecutive windows share one token and every token except the first is a target exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parcae_lm.data.shards import Split, TokenStream
from parcae_lm.errors import DataError

IGNORE_INDEX = -100


def _doc_ids(x: np.ndarray, bos_id: int) -> np.ndarray:
    # Document index of each position within its row: the number of BOS tokens up to and including it, so a
    # BOS opens a new document and tokens before the row's first BOS (the tail of an earlier one) get 0.
    return np.cumsum(x == bos_id, axis=-1)


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise DataError(f"{name} must be a positive int, got {v!r}")


def _check_rank(rank: int, world_size: int) -> None:
    _check_positive(world_size=world_size)
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise DataError(f"rank must be in [0, {world_size}), got {rank!r}")


class TokenLoader:
    """An endless iterator of `(x, y)` (or `(x, y, doc_ids)`) LongTensors of shape [batch_size, seq_len].

    Each epoch permutes the window indices with a generator seeded by (seed, epoch); all ranks compute the
    same permutation and cut it into consecutive blocks of batch_size windows; rank r's k-th batch is block
    k·world_size + r, so ranks never share a window and together see exactly what one rank with
    world_size × batch_size rows would, in the same row order. Every rank gets the same number of batches per epoch (windows
    beyond `world_size * batch_size * batches_per_epoch` are left out of that epoch, a different set each
    epoch when shuffling). `state_dict()` records the position; `load_state_dict()` resumes exactly there.
    """

    def __init__(
        self,
        shard_dir: str | Path,
        split: Split | str,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        with_doc_ids: bool = False,
    ):
        _check_positive(batch_size=batch_size, seq_len=seq_len)
        _check_rank(rank, world_size)
        self.stream = TokenStream(shard_dir, split)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.with_doc_ids = seed, shuffle, with_doc_ids
        self.bos_id = self.stream.manifest.bos_id
        self.num_windows = max(len(self.stream) - 1, 0) // seq_len
        self.windows_per_rank = self.num_windows // world_size
        self.batches_per_epoch = self.windows_per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"the {self.stream.split.value} split has {len(self.stream):,} tokens = {self.num_windows} "
                f"windows of {seq_len}+1, not enough for one batch of {batch_size} on each of {world_size} rank(s)"
            )
        self.epoch, self.batch_in_epoch = 0, 0
        self._order_epoch, self._order = -1, np.empty(0, dtype=np.int64)

    @property
    def tokens_per_epoch(self) -> int:
        """Input tokens this rank sees per epoch."""
        return self.batches_per_epoch * self.batch_size * self.seq_len

    def _rank_windows(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = self.num_windows
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(n)
            else:
                order = np.arange(n)
            # Batch k of rank r is block k·world_size + r of the global order: the global batch of a step is
            # contiguous and rank r holds rows [r·B, (r+1)·B) of it, the rows the model seeds its depths by.
            used = order[: self.batches_per_epoch * self.world_size * self.batch_size]
            self._order = used.reshape(-1, self.world_size, self.batch_size)[:, self.rank].reshape(-1)
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        k, B, T = self.batch_in_epoch, self.batch_size, self.seq_len
        windows = self._rank_windows(self.epoch)[k * B : (k + 1) * B]
        rows = np.stack([self.stream.read(int(w) * T, int(w) * T + T + 1) for w in windows])
        self.batch_in_epoch += 1
        x = torch.from_numpy(rows[:, :-1].copy())
        y = torch.from_numpy(rows[:, 1:].copy())
        if self.with_doc_ids:
            return x, y, torch.from_numpy(_doc_ids(rows[:, :-1], self.bos_id))
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """Position (the next batch to yield) plus the settings it is only meaningful under."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "num_windows": self.num_windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "shuffle", "rank", "world_size", "batch_size", "seq_len", "num_windows"):
            if state.get(key) != getattr(self, key):
                raise DataError(
                    f"cannot resume the data loader: {key} was {state.get(key)!r} when saved, "
                    f"now {getattr(self, key)!r}"
                )
        epoch, k = state["epoch"], state["batch_in_epoch"]
        if not (
            isinstance(epoch, int) and epoch >= 0 and isinstance(k, int) and 0 <= k <= self.batches_per_epoch
        ):
            raise DataError(f"invalid loader position: epoch {epoch!r}, batch {k!r}")
        self.epoch, self.batch_in_epoch = epoch, k


def iter_eval_batches(
    shard_dir: str | Path,
    split: Split | str,
    batch_size: int,
    seq_len: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    with_doc_ids: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Every target token of the split exactly once, in order, in non-overlapping windows of `seq_len`.

    The last window may be short: its inputs are padded with the pad id and its targets with -100 (the
    loss's ignore_index). The last batch may have fewer rows. With several ranks, rank r takes windows
    r, r + world_size, ...; the union over ranks is the whole split.
    """
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    _check_rank(rank, world_size)
    stream = TokenStream(shard_dir, split)
    n = len(stream)
    if n < 2:
        raise DataError(f"the {stream.split.value} split has {n} tokens; evaluation needs at least 2")
    pad_id, bos_id = stream.manifest.pad_id, stream.manifest.bos_id
    num_windows = -(-(n - 1) // seq_len)
    mine = range(rank, num_windows, world_size)
    for b in range(0, len(mine), batch_size):
        idx = mine[b : b + batch_size]
        x = np.full((len(idx), seq_len), pad_id, dtype=np.int64)
        y = np.full((len(idx), seq_len), IGNORE_INDEX, dtype=np.int64)
        for row, w in enumerate(idx):
            start = w * seq_len
            tokens = stream.read(start, min(start + seq_len + 1, n))
            x[row, : len(tokens) - 1] = tokens[:-1]
            y[row, : len(tokens) - 1] = tokens[1:]
        out = (torch.from_numpy(x), torch.from_numpy(y))
        if with_doc_ids:
            out += (torch.from_numpy(_doc_ids(x, bos_id)),)
        yield out
