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

`generate` (and so `model.generate`) keeps its compiled decoders per model, keyed by batch size and a
cache length rounded up to a power of two (`cache_length`): a new prompt length or `max_new_tokens`
reuses the graph of its bucket instead of compiling again. By default (`compiled=None`) a process decodes
eagerly until it has spent `COMPILE_AFTER_SECONDS` decoding, then compiles — a one-off short generation never
waits for a compiler, a process that keeps generating gets the compiled step (see docs/inference.md).

`BatchDecoder` is the continuous-batching form: a cache of many rows, each holding its own sequence at its
own position and depth; a step runs the first n rows (rounded up to a compiled batch bucket).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from parcae_lm.model.kv_cache import FULL_CACHE, CacheStrategy

if TYPE_CHECKING:  # the model imports this module to offer `model.generate`
    from parcae_lm.model.lm import LanguageModel

# Inductor's C++ wrapper emits the graph's call sequence as C++ instead of Python: less per-step overhead.
COMPILE_OPTIONS: dict[str, object] = {"cpp_wrapper": True}
# Seconds of eager decoding a process spends with a model before `generate`'s default compiles the step:
# compiling costs ~5 s (warm inductor cache) to ~30 s (cold) once per cache bucket, which a process that
# has already decoded this long is likely to win back (the compiled step is 2-3x faster on CPU).
COMPILE_AFTER_SECONDS = 10.0
POOL_SIZE = 8  # compiled decoders kept per model (batch size x cache bucket x depth x strategy)
MIN_CACHE_BUCKET = 64


def compile_supported(device: torch.device) -> bool:
    """Whether torch.compile can build the decode step here: a C++ compiler for CPU, Triton for CUDA.
    (Inductor's MPS backend is not relied on: MPS decodes eagerly.)"""
    if device.type == "cpu":
        return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return has_triton()
    return False


def cache_length(needed: int, block_size: int) -> int:
    """The cache length a compiled decoder for `needed` positions gets: the next power of two (at least
    MIN_CACHE_BUCKET), capped at the context. Attention covers the whole buffer, so a bucket costs at most
    twice the attention of an exact fit, and every length in it shares one graph."""
    length = MIN_CACHE_BUCKET
    while length < needed:
        length *= 2
    return min(length, block_size)


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


class BatchDecoder:
    """Continuous batching: a KV cache of `rows` sequences, each at its own position and (Parcae) depth.

    Running sequences occupy rows 0..n−1 (the caller keeps them compact with `move_row`); `step` advances
    all n by one token through the first b rows of the cache, b the smallest batch bucket ≥ n (powers of
    two up to `rows`). Rows that should not advance (free rows n..b−1, or a row still reading its prompt)
    compute a throwaway token at `idle_position`, the cache's last position: no query reads it before a
    real token is written there. `prefill` writes one row's prompt (or a chunk of
    it) while the others keep their state. With `compiled=True` each bucket's step is one static-shape
    graph, compiled on first use or by `precompile`; prefill stays eager.

    A Parcae row takes `steps` iterations (≤ the cache's depth `num_steps`) and may exit early on a
    relative state change below its `threshold` (see `Parcae.forward`'s row_steps / exit_threshold); each
    step also returns the iterations every row took.
    """

    def __init__(
        self,
        model: LanguageModel,
        rows: int,
        max_len: int,
        num_steps: int | None = None,
        compiled: bool = False,
        cache_dtype: torch.dtype | None = None,
    ) -> None:
        if model.training:
            raise ValueError("decoding runs models in eval mode; call model.eval() first")
        if rows < 1:
            raise ValueError(f"rows must be ≥ 1, got {rows}")
        self.model, self.rows = model, rows
        self.looped = model.config.is_parcae
        self.cache = model.new_kv_cache(rows, max_len, num_steps, FULL_CACHE, cache_dtype)
        self.num_steps = self.cache.num_steps or 1
        self.buckets = sorted({min(2**i, rows) for i in range(rows.bit_length() + 1)})
        self._views = {b: self.cache.rows(0, b) for b in self.buckets}
        self._compiled: dict[int, Callable] = {}
        self.compile_seconds: dict[int, float] = {}
        self.compiled = compiled

    @property
    def max_len(self) -> int:
        return self.cache.length

    @property
    def idle_position(self) -> int:
        return self.cache.length - 1

    def bucket(self, n: int) -> int:
        if not 1 <= n <= self.rows:
            raise ValueError(f"a step runs 1..{self.rows} rows, got {n}")
        return next(b for b in self.buckets if b >= n)

    @torch.no_grad()
    def prefill(self, row: int, ids: Tensor, start: int = 0, steps: int | None = None) -> Tensor:
        """Write the chunk `ids` [T] of row `row`'s sequence at positions start..start+T−1 (its earlier
        positions already written); returns the logits [V] after its last token."""
        T = ids.shape[0]
        if start + T > self.max_len:
            raise ValueError(f"KV cache overflow: {start} + {T} tokens > max_len={self.max_len}")
        kw = {}
        if self.looped:
            kw["row_steps"] = torch.tensor([self._steps(steps)], device=ids.device)
        out = self.model(
            ids[None],
            kv_cache=self.cache.rows(row, row + 1),
            input_pos=torch.arange(start, start + T, device=ids.device),
            input_pos_maxp1=start + T,
            logits_to_keep=1,
            **kw,
        )
        return out["logits"][0, -1]

    @torch.no_grad()
    def step(
        self,
        tokens: Tensor,
        positions: Tensor,
        steps: Tensor | None = None,
        thresholds: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Rows 0..n−1 take token `tokens[i]` at position `positions[i]` ([n] each; `steps` [n] int64 and
        `thresholds` [n] float per row, default the full depth and never exiting). Returns logits [n, V]
        and the iterations each row took [n]."""
        n = tokens.shape[0]
        b = self.bucket(n)
        if int(positions.max()) >= self.max_len:
            raise ValueError(f"KV cache overflow: position {int(positions.max())} ≥ max_len={self.max_len}")
        device = self.cache.prelude[0].k.device
        tok = torch.zeros(b, dtype=torch.long, device=device)
        pos = torch.full((b, 1), self.idle_position, dtype=torch.long, device=device)
        stp = torch.ones(b, dtype=torch.long, device=device)
        thr = torch.zeros(b, dtype=torch.float32, device=device)
        tok[:n], pos[:n, 0] = tokens, positions
        stp[:n] = self.num_steps if steps is None else steps.clamp(1, self.num_steps)
        if thresholds is not None:
            thr[:n] = thresholds
        fn = self._step_fn(b)
        logits, iterations = fn(tok, pos, stp, thr)
        return logits[:n], iterations[:n]

    def move_row(self, src: int, dst: int) -> None:
        """Move the sequence in row `src` to row `dst` (to keep running rows compact)."""
        if src != dst:
            self.cache.move_row(src, dst)

    def precompile(self, buckets: list[int] | None = None) -> dict[int, float]:
        """Compile the steps of `buckets` (default: all) now; returns seconds per bucket."""
        if not self.compiled:
            raise ValueError("this BatchDecoder was built without compiled=True")
        for b in buckets or self.buckets:
            if b not in self.compile_seconds:
                device = self.cache.prelude[0].k.device
                idle = torch.full((b,), self.idle_position, dtype=torch.long, device=device)
                self.step(torch.zeros(b, dtype=torch.long, device=device), idle)
        return dict(self.compile_seconds)

    def _steps(self, steps: int | None) -> int:
        if steps is None:
            return self.num_steps
        if not 1 <= steps <= self.num_steps:
            raise ValueError(f"steps must be in 1..{self.num_steps} (the cache's depth), got {steps}")
        return steps

    def _step_fn(self, b: int) -> Callable:
        if not self.compiled:
            return self._eager_step(b)
        if b not in self._compiled:
            # Lazily built tables (RoPE, h₀) must exist before tracing: one eager step builds them.
            eager = self._eager_step(b)
            compiled = torch.compile(
                eager,
                fullgraph=True,
                dynamic=False,
                options=dict(COMPILE_OPTIONS) if self.model.device.type == "cpu" else None,
                isolate_recompiles=True,
            )

            def first_call(*args: Tensor) -> tuple[Tensor, Tensor]:
                eager(*args)
                t0 = time.perf_counter()
                out = compiled(*args)
                self.compile_seconds[b] = time.perf_counter() - t0
                self._compiled[b] = compiled
                return out

            return first_call
        return self._compiled[b]

    def _eager_step(self, b: int) -> Callable:
        cache, model, looped = self._views[b], self.model, self.looped

        def step(tok: Tensor, pos: Tensor, stp: Tensor, thr: Tensor) -> tuple[Tensor, Tensor]:
            kw = {"row_steps": stp, "exit_threshold": thr} if looped else {}
            out = model(tok[:, None], kv_cache=cache, input_pos=pos, logits_to_keep=1, **kw)
            iterations = out["iterations"][:, 0] if looped else torch.ones_like(tok)
            return out["logits"][:, -1], iterations

        return step


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


class _Pool:
    """One model's compiled decoders (most recently used last) and its eager decoding time so far."""

    def __init__(self) -> None:
        self.decoders: dict[tuple, Decoder] = {}
        self.eager_seconds = 0.0
        self.lock = threading.Lock()


_POOLS: weakref.WeakKeyDictionary[LanguageModel, _Pool] = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def _pool(model: LanguageModel) -> _Pool:
    with _POOLS_LOCK:
        if model not in _POOLS:
            _POOLS[model] = _Pool()
        return _POOLS[model]


def compiled_decoders(model: LanguageModel) -> int:
    """How many compiled decoders `generate` keeps for `model` (idle ones; see `checkout_decoder`)."""
    pool = _pool(model)
    with pool.lock:
        return len(pool.decoders)


def _decoder_key(model: LanguageModel, batch_size: int, length: int, num_steps, strategy) -> tuple:
    param = model.transformer.wte.weight
    return batch_size, length, num_steps, str(strategy), str(param.device), param.dtype


def checkout_decoder(
    model: LanguageModel,
    batch_size: int,
    needed: int,
    num_steps: int | None = None,
    strategy: CacheStrategy = FULL_CACHE,
    compiled: bool | None = None,
) -> tuple[Decoder, Callable[[], None]]:
    """A reset decoder with room for `needed` positions, and the function that returns it when done.

    compiled=True: the model's pooled compiled decoder for this batch size and cache bucket (built, and
    compiled on its first step, if absent). None: that decoder if it exists or the model has already
    decoded `COMPILE_AFTER_SECONDS` eagerly in this process (and compiling is supported), else an eager
    one. A decoder is lent to one caller at a time: a concurrent caller gets a fresh one."""
    pool = _pool(model)
    length = cache_length(needed, model.config.block_size)
    key = _decoder_key(model, batch_size, length, num_steps, strategy)
    with pool.lock:
        if compiled is None:
            compiled = compile_supported(model.device) and (
                key in pool.decoders or pool.eager_seconds >= COMPILE_AFTER_SECONDS
            )
        dec = pool.decoders.pop(key, None) if compiled else None
    if not compiled:
        dec = Decoder(model, batch_size, needed, num_steps, strategy)
        start = time.perf_counter()

        def give_back_eager() -> None:
            with pool.lock:
                pool.eager_seconds += time.perf_counter() - start

        return dec, give_back_eager
    if dec is None:
        dec = Decoder(model, batch_size, length, num_steps, strategy, compiled=True)
    dec.reset()

    def give_back() -> None:
        with pool.lock:
            pool.decoders[key] = dec  # most recently used last
            while len(pool.decoders) > POOL_SIZE:
                pool.decoders.pop(next(iter(pool.decoders)))

    return dec, give_back


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
    compiled: bool | None = None,
    strategy: CacheStrategy = FULL_CACHE,
) -> Tensor:
    """Continue each row of `input_ids` [B, T] by up to `max_new_tokens` tokens; returns [B, T + new].

    Prompts plus new tokens must fit in the model's context (block_size): longer requests raise
    ValueError rather than silently truncating. `compiled`: decode through the model's pooled compiled
    step (True), eagerly (False), or (None, the default) eagerly until this process has spent
    `COMPILE_AFTER_SECONDS` decoding with the model, compiled from then on. Compiled decoders are shared
    by every prompt length and `max_new_tokens` whose total falls in the same power-of-two bucket, so a
    process compiles once per batch size and bucket (see `checkout_decoder`).
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
    dec, give_back = checkout_decoder(model, B, T + max_new_tokens, num_steps, strategy, compiled)
    try:

        def pick(logits: Tensor) -> Tensor:
            return sample_next(logits, temperature, top_k, top_p, generator)

        return decode(
            dec.prefill, dec.step, input_ids, max_new_tokens, model.config.vocab_size, pick, eos_id, on_token
        )
    finally:
        give_back()
        model.train(was_training)
