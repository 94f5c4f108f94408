"""A preallocated KV cache covering the unrolled passes of a looped model.

Slots are laid out as the model unrolls: prelude layer i → slot i; recurrence r, core layer l →
n_prelude + s(r)·n_core + l; coda layer i → n_prelude + S·n_core + i, where the cache strategy maps
iteration r to one of its S core slots s(r). Every slot is a [B, H_kv, max_len, D] buffer allocated once;
decoding writes one column per token, no re-stacking.

Strategies (`CacheStrategy`): `full` gives every iteration its own slots (S = R, exact). The others share
slots across iterations so memory does not grow with depth: a later iteration overwrites the token's
entry, and later tokens see, at iteration r, the entry last written to s(r) — for `last` that is every
earlier token's final iteration.

| strategy  | S | s(r)                                   |
|-----------|---|----------------------------------------|
| full      | R | r                                      |
| last      | 1 | 0                                      |
| first-last| 2 | 0 if r = 0 else 1                      |
| ring-N    | N | r mod N                                |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from parcae_lm.errors import ConfigError
from parcae_lm.model import GPT, LanguageModel, Parcae


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


class KVSlot:
    def __init__(self, cache: KVCache, k: Tensor, v: Tensor) -> None:
        self.cache, self.k, self.v = cache, k, v

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.cache.pos, self.cache.pos + k.shape[2]
        if end > self.cache.max_len:
            raise ValueError(f"KV cache overflow: position {end} > max_len={self.cache.max_len}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    def __init__(
        self,
        model: LanguageModel,
        batch_size: int,
        max_len: int,
        num_steps: int | None = None,
        dtype: torch.dtype | None = None,
        strategy: CacheStrategy = FULL_CACHE,
    ) -> None:
        cfg = model.config
        if max_len > cfg.block_size:
            raise ValueError(f"KV cache length {max_len} exceeds the model's block_size={cfg.block_size}")
        param = model.transformer.wte.weight
        dtype, device = dtype or param.dtype, param.device
        self.pos, self.max_len = 0, max_len
        self.num_steps: int | None = None
        self.strategy = strategy
        self.n_core_slots = 0
        shapes: list[tuple[int, int]] = []
        if isinstance(model, Parcae):
            self.num_steps = cfg.mean_recurrence if num_steps is None else int(num_steps)
            self.n_prelude, self.n_core = cfg.n_layers_in_prelude, cfg.n_layers_in_recurrent_block
            main = [(b.attn.n_kv, b.attn.head_size) for b in model.transformer.prelude]
            core = [(b.attn.n_kv, b.attn.head_size) for b in model.transformer.core_block]
            coda = [(b.attn.n_kv, b.attn.head_size) for b in model.transformer.coda]
            self.n_core_slots = strategy.num_slots(self.num_steps)
            shapes = main + core * self.n_core_slots + coda
        elif isinstance(model, GPT):
            if num_steps is not None:
                raise ValueError("GPT has no recurrence: num_steps must be None")
            if strategy != FULL_CACHE:
                raise ConfigError("GPT has no recurrence: only the full cache strategy applies")
            shapes = [(b.attn.n_kv, b.attn.head_size) for b in model.transformer.h]
            self.n_prelude, self.n_core = len(shapes), 0
        self.slots = [
            KVSlot(
                self,
                torch.empty(batch_size, h, max_len, d, dtype=dtype, device=device),
                torch.empty(batch_size, h, max_len, d, dtype=dtype, device=device),
            )
            for h, d in shapes
        ]

    def slot(self, index: int) -> KVSlot:
        return self.slots[index]

    def core_slot(self, iteration: int, layer: int) -> KVSlot:
        s = self.strategy.slot_of(iteration, self.num_steps)
        return self.slots[self.n_prelude + s * self.n_core + layer]

    def coda_slot(self, layer: int) -> KVSlot:
        return self.slots[self.n_prelude + self.n_core_slots * self.n_core + layer]

    def causal_mask(self, new_tokens: int, device: torch.device) -> Tensor | None:
        """Bottom-right causal mask for `new_tokens` queries over pos + new_tokens keys (None for one query)."""
        if new_tokens == 1:
            return None
        if self.pos + new_tokens > self.max_len:
            raise ValueError(f"KV cache overflow: {self.pos} + {new_tokens} tokens > max_len={self.max_len}")
        q = torch.arange(self.pos, self.pos + new_tokens, device=device)[:, None]
        k = torch.arange(self.pos + new_tokens, device=device)[None, :]
        return (k <= q)[None, None]

    def advance(self, tokens: int) -> None:
        self.pos += tokens

    def memory_bytes(self) -> int:
        return sum(s.k.numel() * s.k.element_size() * 2 for s in self.slots)
