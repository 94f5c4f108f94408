"""A preallocated KV cache covering the unrolled passes of a looped model.

Slots are laid out as the model unrolls: prelude layer i → slot i; recurrence r, core layer l →
n_prelude + r·n_core + l; coda layer i → n_prelude + R·n_core + i (R = the cache's depth). Every slot
is a [B, H_kv, max_len, D] buffer allocated once; decoding writes one column per token, no re-stacking.
"""

from __future__ import annotations

import torch
from torch import Tensor

from parcae_lm.model import GPT, LanguageModel, Parcae


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
    ) -> None:
        cfg = model.config
        if max_len > cfg.block_size:
            raise ValueError(f"KV cache length {max_len} exceeds the model's block_size={cfg.block_size}")
        param = model.transformer.wte.weight
        dtype, device = dtype or param.dtype, param.device
        self.pos, self.max_len = 0, max_len
        self.num_steps: int | None = None
        shapes: list[tuple[int, int]] = []
        if isinstance(model, Parcae):
            self.num_steps = cfg.mean_recurrence if num_steps is None else int(num_steps)
            self.n_prelude, self.n_core = cfg.n_layers_in_prelude, cfg.n_layers_in_recurrent_block
            main = [(b.attn.n_kv, b.attn.head_size) for b in model.transformer.prelude]
            core = [(b.attn.n_kv, b.attn.head_size) for b in model.transformer.core_block]
            coda = [(b.attn.n_kv, b.attn.head_size) for b in model.transformer.coda]
            shapes = main + core * self.num_steps + coda
        elif isinstance(model, GPT):
            if num_steps is not None:
                raise ValueError("GPT has no recurrence: num_steps must be None")
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
        return self.slots[self.n_prelude + iteration * self.n_core + layer]

    def coda_slot(self, layer: int) -> KVSlot:
        return self.slots[self.n_prelude + self.num_steps * self.n_core + layer]

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
