"""Preallocated key/value caches, built from shapes.

`KVCache` holds one attention layer's keys and values, [batch, kv heads, length, head size], allocated once.
A forward writes its new keys and values at their positions (`input_pos`) and attends over the buffer.

`ModelCache` is what a whole model needs, laid out as it unrolls: one `KVCache` per prelude layer, S slots
of the core layers, one per coda layer (a GPT has only the `prelude` list: its one stack). The model builds
it (`model.new_kv_cache(...)`) from its own layer shapes; nothing here knows about models.

A looped model runs its core R times per token. `CacheStrategy` maps iteration r to one of S core slots:
`full` gives every iteration its own (S = R, exact); the others share slots so memory does not grow with
depth: a later iteration overwrites the token's entry, and later tokens see, at iteration r, the entry last
written to slot s(r) — for `last`, every earlier token's final iteration.

| strategy  | S | s(r)                   |
|-----------|---|------------------------|
| full      | R | r                      |
| last      | 1 | 0                      |
| first-last| 2 | 0 if r = 0 else 1      |
| ring-N    | N | r mod N                |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from parcae_lm.errors import ConfigError


class CacheKind(enum.StrEnum):
    FULL = "full"
    LAST = "last"
    FIRST_LAST = "first-last"
    RING = "ring"


@dataclass(frozen=True)
class CacheStrategy:
    """How recurrence iterations map onto core KV slots (see the module docstring)."""

    kind: CacheKind = CacheKind.FULL
    size: int = 0  # ring length (RING only)

    def __post_init__(self) -> None:
        if self.kind == CacheKind.RING and self.size < 1:
            raise ConfigError(f"a ring cache needs size ≥ 1, got {self.size}")
        if self.kind != CacheKind.RING and self.size != 0:
            raise ConfigError(f"size is only meaningful for the ring strategy, not {self.kind.value}")

    @classmethod
    def parse(cls, text: str) -> CacheStrategy:
        """'full', 'last', 'first-last' or 'ring-N'."""
        if text.startswith("ring-"):
            try:
                return cls(CacheKind.RING, int(text[5:]))
            except ValueError:
                raise ConfigError(f"bad ring size in cache strategy {text!r} (expected ring-N)") from None
        try:
            return cls(CacheKind(text))
        except ValueError:
            choices = ", ".join([k.value for k in CacheKind if k != CacheKind.RING] + ["ring-N"])
            raise ConfigError(f"unknown cache strategy {text!r}; choose one of {choices}") from None

    def __str__(self) -> str:
        return f"ring-{self.size}" if self.kind == CacheKind.RING else self.kind.value

    def num_slots(self, num_steps: int) -> int:
        if self.kind == CacheKind.FULL:
            return num_steps
        if self.kind == CacheKind.LAST:
            return 1
        if self.kind == CacheKind.FIRST_LAST:
            return 2
        return self.size

    def slot_of(self, iteration: int, num_steps: int) -> int:
        if self.kind == CacheKind.FULL:
            if iteration >= num_steps:
                raise ValueError(f"iteration {iteration} beyond the full cache's depth {num_steps}")
            return iteration
        if self.kind == CacheKind.LAST:
            return 0
        if self.kind == CacheKind.FIRST_LAST:
            return 0 if iteration == 0 else 1
        return iteration % self.size


FULL_CACHE = CacheStrategy()


class KVCache:
    """Keys and values of one attention layer for `batch` rows and `length` positions."""

    def __init__(
        self,
        batch: int,
        heads: int,
        length: int,
        head_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # Zeros, not empty: attention over the whole buffer gives unwritten entries weight 0, and 0·NaN = NaN.
        self.k = torch.zeros(batch, heads, length, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        # index_copy_ is one in-place kernel (and what compiled steps fuse); MPS lacks it on some torch
        # versions, where positions are written by indexed assignment instead (the same values).
        self.index_copy = self.k.device.type != "mps"

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def update(
        self, input_pos: Tensor, k: Tensor, v: Tensor, rows: Tensor | None = None, length: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Write k, v [b, H, T, D] at positions `input_pos` ([T], or [b, T] per row) of all rows or of `rows`
        (b indices); return the keys and values attention reads: positions 0..length−1 (default: all)."""
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        if rows is None and input_pos.dim() == 1:
            if self.index_copy:
                self.k.index_copy_(2, input_pos, k)
                self.v.index_copy_(2, input_pos, v)
            else:
                self.k[:, :, input_pos] = k
                self.v[:, :, input_pos] = v
            keys, values = self.k, self.v
        else:
            b, H, T, D = k.shape
            r = torch.arange(b, device=k.device) if rows is None else rows
            pos = input_pos.expand(b, -1)
            if self.index_copy:
                # One index_copy_ into the flat buffer at (row, head, position): an in-place write that
                # compiled steps keep in place (an indexed assignment would copy the whole cache).
                heads = torch.arange(H, device=k.device)
                flat = (r[:, None, None] * H + heads[None, :, None]) * self.length + pos[:, None, :]
                self.k.view(-1, D).index_copy_(0, flat.reshape(-1), k.reshape(-1, D))
                self.v.view(-1, D).index_copy_(0, flat.reshape(-1), v.reshape(-1, D))
            else:
                self.k[r[:, None], :, pos] = k.transpose(1, 2)  # advanced indices first: [b, T, H, D]
                self.v[r[:, None], :, pos] = v.transpose(1, 2)
            keys, values = (self.k, self.v) if rows is None else (self.k[rows], self.v[rows])
        if length is not None and length < self.length:
            keys, values = keys[:, :, :length], values[:, :, :length]
        return keys, values

    def copy_position(self, src: KVCache, rows: Tensor, pos: int) -> None:
        """Copy `src`'s entries for `rows` at position `pos` into this cache (adaptive depth fills the
        iterations a token skipped with its last computed one)."""
        self.k[rows, :, pos] = src.k[rows, :, pos]
        self.v[rows, :, pos] = src.v[rows, :, pos]

    def memory_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def rows(self, start: int, stop: int) -> KVCache:
        """A cache over rows start..stop−1 that shares this one's storage (writes land in both)."""
        view = KVCache.__new__(KVCache)
        view.k, view.v, view.index_copy = self.k[start:stop], self.v[start:stop], self.index_copy
        return view

    def move_row(self, src: int, dst: int) -> None:
        """Copy row `src` (every position) into row `dst`."""
        self.k[dst].copy_(self.k[src])
        self.v[dst].copy_(self.v[src])


class ModelCache:
    """Every attention layer's cache for one model, in unrolled order: prelude, core slots, coda."""

    def __init__(
        self,
        prelude: list[KVCache],
        core: list[list[KVCache]] | None = None,
        coda: list[KVCache] | None = None,
        num_steps: int | None = None,
        strategy: CacheStrategy = FULL_CACHE,
    ) -> None:
        self.prelude, self.core, self.coda = prelude, core or [], coda or []
        self.num_steps, self.strategy = num_steps, strategy
        first = self.layers()[0]
        self.batch_size, self.length = first.k.shape[0], first.length

    def core_layer(self, iteration: int, layer: int) -> KVCache:
        return self.core[self.strategy.slot_of(iteration, self.num_steps)][layer]

    def layers(self) -> list[KVCache]:
        return [*self.prelude, *(c for slot in self.core for c in slot), *self.coda]

    def memory_bytes(self) -> int:
        return sum(c.memory_bytes() for c in self.layers())

    def rows(self, start: int, stop: int) -> ModelCache:
        """The cache of rows start..stop−1, sharing this one's storage: a batch can run on the first rows of
        a larger cache, or a prefill on one row, while the others keep their sequences."""
        return ModelCache(
            [c.rows(start, stop) for c in self.prelude],
            [[c.rows(start, stop) for c in slot] for slot in self.core],
            [c.rows(start, stop) for c in self.coda],
            self.num_steps,
            self.strategy,
        )

    def move_row(self, src: int, dst: int) -> None:
        """Copy sequence `src` into row `dst` in every layer (compacting the rows of a running batch)."""
        for c in self.layers():
            c.move_row(src, dst)
