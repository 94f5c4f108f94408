"""Incremental decoding through the model's own forward: a preallocated KV cache, prefill, one-token steps,
sampling, and the one decode loop every generator uses.

    dec = Decoder(model, batch_size=1, max_len=512)   # model.eval() first
    logits = dec.prefill(prompt_ids)                  # [B, V] for the last prompt position
    logits = dec.step(next_token)                     # [B, V], one new token per row

A `Decoder` calls `model(ids, kv_cache=..., input_pos=...)`: there is no second implementation of the
blocks or the loop. In eager mode attention reads only the written part of the cache. With
`compiled=True` each one-token step is a single torch.compile graph with the same shapes at every
position (the position is a tensor, attention covers the whole masked buffer), so it compiles once per
decoder and then runs without Python overhead between the ops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from parcae_lm.model.kv_cache import FULL_CACHE, CacheStrategy

if TYPE_CHECKING:  # the model imports this module to offer `model.generate`
    from parcae_lm.model.lm import LanguageModel

# Inductor's C++ wrapper emits the graph's call sequence as C++ instead of Python: less per-step overhead.
COMPILE_OPTIONS: dict[str, object] = {"cpp_wrapper": True}


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row from [B, V] logits. temperature 0 means greedy (argmax)."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(dim=-1)
    try:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    except RuntimeError as e:  # multinomial's own check, so no extra pass over the probabilities
        if "inf" not in str(e) and "nan" not in str(e):
            raise
        raise ValueError(
            "cannot sample: the model's next-token probabilities hold NaN or inf (its weights or activations "
            "are not finite)"
        ) from None


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:  # (also refuses NaN)
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


class Decoder:
    """Prefill and one-token decode steps for a Parcae or GPT model, with a preallocated KV cache."""

    def __init__(
        self,
        model: LanguageModel,
        batch_size: int,
        max_len: int,
        num_steps: int | None = None,
        strategy: CacheStrategy = FULL_CACHE,
        cache_dtype: torch.dtype | None = None,
        compiled: bool = False,
    ) -> None:
        """`num_steps`: the test-time depth of a looped model (default its mean recurrence). `compiled`:
        run `step` as one static-shape compiled graph (compiled on the first step or by `precompile()`)."""
        if model.training:
            raise ValueError("decoding runs models in eval mode; call model.eval() first")
        self.model, self.batch_size = model, batch_size
        self.cache = model.new_kv_cache(batch_size, max_len, num_steps, strategy, cache_dtype)
        self.pos = 0
        self.compile_seconds: float | None = None
        self._compiled = None
        if compiled:
            # isolate_recompiles: this decoder's graph lives in its own cache, so decoders of other shapes in
            # the same process neither count against its recompile limit nor add guards to its calls.
            self._compiled = torch.compile(
                self._forward_step,
                fullgraph=True,
                dynamic=False,
                options=dict(COMPILE_OPTIONS) if model.device.type == "cpu" else None,
                isolate_recompiles=True,
            )

    @property
    def max_len(self) -> int:
        return self.cache.length

    def reset(self) -> None:
        """Start a new sequence in the same buffers (old entries are overwritten before being read)."""
        self.pos = 0

    @torch.no_grad()
    def prefill(self, ids: Tensor) -> Tensor:
        """Process a [B, T] chunk at the current position; returns the last position's logits [B, V]."""
        T = ids.shape[1]
        self._check_room(T)
        input_pos = torch.arange(self.pos, self.pos + T, device=ids.device)
        out = self.model(
            ids, kv_cache=self.cache, input_pos=input_pos, input_pos_maxp1=self.pos + T, logits_to_keep=1
        )
        self.pos += T
        return out["logits"][:, -1]

    @torch.no_grad()
    def step(self, token: Tensor) -> Tensor:
        """One new token per row ([B]); returns logits [B, V]."""
        self._check_room(1)
        input_pos = torch.tensor([self.pos], device=token.device)
        if self._compiled is None:
            out = self.model(
                token[:, None],
                kv_cache=self.cache,
                input_pos=input_pos,
                input_pos_maxp1=self.pos + 1,
                logits_to_keep=1,
            )
            logits = out["logits"][:, -1]
        else:
            logits = self._call_compiled(token, input_pos)
        self.pos += 1
        return logits

    def precompile(self) -> float:
        """Compile the decode step now instead of on the first `step`; returns the seconds it took. Writes
        K/V at the current position, which the next prefill or step overwrites before anything reads it."""
        if self._compiled is None:
            raise ValueError("this Decoder was built without compiled=True")
        if self.compile_seconds is None:
            device = self.model.device
            token = torch.zeros(self.batch_size, dtype=torch.long, device=device)
            self._call_compiled(token, torch.tensor([min(self.pos, self.max_len - 1)], device=device))
        return self.compile_seconds

    def _forward_step(self, token: Tensor, input_pos: Tensor) -> Tensor:
        return self.model(token[:, None], kv_cache=self.cache, input_pos=input_pos, logits_to_keep=1)[
            "logits"
        ][:, -1]

    @torch.no_grad()
    def _call_compiled(self, token: Tensor, input_pos: Tensor) -> Tensor:
        token = token.long().contiguous()  # a strided column (ids[:, i]) would recompile on its stride
        if self.compile_seconds is not None:
            return self._compiled(token, input_pos)
        # The first call traces the model: its lazily built tables (RoPE, h₀) must exist by then, or
        # building them inside the graph would break it. One eager step at this position builds them.
        self._forward_step(token, input_pos)
        t0 = time.perf_counter()
        out = self._compiled(token, input_pos)
        self.compile_seconds = time.perf_counter() - t0
        return out

    def _check_room(self, tokens: int) -> None:
        if self.pos + tokens > self.max_len:
            raise ValueError(f"KV cache overflow: {self.pos} + {tokens} tokens > max_len={self.max_len}")


def decode(
    prefill: Callable[[Tensor], Tensor],
    step: Callable[[Tensor], Tensor],
    input_ids: Tensor,
    max_new_tokens: int,
    vocab_size: int,
    pick: Callable[[Tensor], Tensor],
    eos_id: int | None = None,
    on_token: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """The decode loop: ids [B, T + new] continued by `pick(logits)` from a decoder's `prefill(ids)` and
    `step(token)` (both returning logits [B, V]). Ids ≥ vocab_size (the embedding table's padding rows)
    are never picked. Rows that emit `eos_id` keep emitting it; the loop stops when every row has.
    `on_token` receives each new column [B] as it is produced (for streaming)."""
    B, T = input_ids.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=input_ids.device)
    out[:, :T] = input_ids
    if max_new_tokens == 0:
        return out
    logits = prefill(input_ids)[:, :vocab_size]
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for i in range(max_new_tokens):
        token = pick(logits)
        if eos_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_id), token)
            finished |= token == eos_id
        out[:, T + i] = token
        if on_token is not None:
            on_token(token)
        if i + 1 == max_new_tokens or (eos_id is not None and bool(finished.all())):
            return out[:, : T + i + 1]
        logits = step(token)[:, :vocab_size]
    return out


@torch.no_grad()
def generate(
    model: LanguageModel,
    input_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_steps: int | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    on_token: Callable[[Tensor], None] | None = None,
    compiled: bool = False,
    strategy: CacheStrategy = FULL_CACHE,
) -> Tensor:
    """Continue each row of `input_ids` [B, T] by up to `max_new_tokens` tokens; returns [B, T + new].

    Prompts plus new tokens must fit in the model's context (block_size): longer requests raise
    ValueError rather than silently truncating. `compiled=True` decodes through one static-shape compiled
    step (see `Decoder`: several times faster per token on CPU once compiled, which takes seconds).
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    B, T = input_ids.shape
    if T == 0:
        raise ValueError("generate needs a non-empty prompt (e.g. the BOS token)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be ≥ 0, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    limit = model.config.block_size
    if T + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of {limit} tokens; "
            "shorten the prompt or ask for fewer tokens"
        )
    was_training = model.training
    model.eval()
    try:
        dec = Decoder(model, B, T + max_new_tokens, num_steps, strategy, compiled=compiled)

        def pick(logits: Tensor) -> Tensor:
            return sample_next(logits, temperature, top_k, top_p, generator)

        return decode(
            dec.prefill, dec.step, input_ids, max_new_tokens, model.config.vocab_size, pick, eos_id, on_token
        )
    finally:
        model.train(was_training)
