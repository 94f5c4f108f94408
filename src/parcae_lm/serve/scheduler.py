"""Continuous batching: one thread runs the model; requests join and leave its decode batch between tokens.

Every running sequence owns one row of a `BatchDecoder`'s cache (rows 0..n−1, kept compact: when one
finishes, the last row moves into its place). Each tick of the loop

1. drops sequences whose client went away (their row is free for the next tick),
2. admits waiting sequences into free rows,
3. prefills one chunk (`prefill_chunk` tokens) of the oldest sequence still reading its prompt — a long
   prompt is spread over several ticks, so running streams wait at most one chunk between tokens,
4. runs one batched decode step for every sequence past its prompt, each at its own position, depth
   (`recurrence`) and exit threshold, and samples each row with its own settings and generator.

Waiting requests sit in a bounded queue: `submit` raises `QueueFull` when it is full (the server answers
429). `shutdown(drain=True)` refuses new requests and lets the admitted ones finish.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from parcae_lm.model import LanguageModel, sample_next
from parcae_lm.model.decode import BatchDecoder
from parcae_lm.serve.metrics import Metrics
from parcae_lm.tokenizer import Tokenizer


class QueueFull(Exception):
    """The waiting queue is at capacity."""


class ShuttingDown(Exception):
    """The scheduler no longer accepts requests."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # alternatives reported per token (0: only the chosen token's logprob)
    recurrence: int | None = None  # test-time depth of a looped model (default: the server's depth)
    exit_threshold: float = 0.0  # adaptive exit on the relative state change (0: never early)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float]


@dataclass
class Chunk:
    """Text produced since the previous chunk, with the tokens behind it and the iterations each took."""

    text: str
    token_ids: list[int]
    iterations: list[int]
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Finished:
    reason: str  # "stop", "length", "cancelled" or "error"
    prompt_tokens: int
    completion_tokens: int
    iterations: int  # recurrence iterations spent on the generated tokens
    error: str | None = None


Event = Chunk | Finished


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    generator: torch.Generator
    row: int = -1
    prefilled: int = 0
    next_token: int | None = None  # sampled, not yet fed to the model
    generated: list[int] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    sent_chars: int = 0
    pending_ids: list[int] = field(default_factory=list)  # tokens whose text has not been sent yet
    pending_iterations: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False

    @property
    def position(self) -> int:
        """Where `next_token` goes in the cache (it is the last generated token)."""
        return len(self.prompt) + len(self.generated) - 1

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(
        self,
        model: LanguageModel,
        tokenizer: Tokenizer,
        rows: int = 8,
        max_len: int | None = None,
        num_steps: int | None = None,
        compiled: bool = False,
        max_queue: int = 64,
        prefill_chunk: int = 128,
        metrics: Metrics | None = None,
    ) -> None:
        """`rows`: sequences decoded together; `max_len`: cache positions per sequence (default the
        model's context); `num_steps`: the cache's depth, the largest `recurrence` a request may ask
        (default the model's mean recurrence); `compiled`: compile the batched step (`precompile`)."""
        self.model, self.tokenizer = model, tokenizer
        max_len = max_len or model.config.block_size
        self.decoder = BatchDecoder(model, rows, max_len, num_steps, compiled=compiled)
        self.max_queue, self.prefill_chunk = max_queue, prefill_chunk
        self.metrics = metrics
        self.vocab = model.config.vocab_size
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="parcae-scheduler", daemon=True)

    # -- the request side --------------------------------------------------------------------------
    @property
    def max_len(self) -> int:
        return self.decoder.max_len

    @property
    def depth(self) -> int:
        return self.decoder.num_steps

    def start(self) -> None:
        self._thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, emit: Callable[[Event], None]) -> Sequence:
        """Queue a sequence; `emit` receives its `Chunk`s and one `Finished` (on the scheduler thread)."""
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) + params.max_tokens > self.max_len:
            raise ValueError(f"prompt + max_tokens exceeds the context of {self.max_len} tokens")
        g = torch.Generator(device=self.model.device)
        if params.seed is None:
            g.seed()
        else:
            g.manual_seed(params.seed)
        seq = Sequence(list(prompt), params, emit, g)
        with self._cv:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self._waiting)} requests are waiting (the queue holds {self.max_queue})"
                )
            self._waiting.append(seq)
            self._cv.notify()
        return seq

    def cancel(self, seq: Sequence) -> None:
        seq.cancel()
        with self._cv:
            self._cv.notify()

    def counts(self) -> tuple[int, int]:
        """(running, waiting) sequences."""
        with self._cv:
            return len(self._active), len(self._waiting)

    def shutdown(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Refuse new requests; with `drain`, finish the admitted ones (up to `timeout` s), else cancel them."""
        with self._cv:
            self._stopping = True
            if not drain:
                for seq in [*self._active, *self._waiting]:
                    seq.cancel()
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():  # drain timed out: cancel the rest
            with self._cv:
                for seq in [*self._active, *self._waiting]:
                    seq.cancel()
                self._cv.notify()
            self._thread.join(5.0)

    # -- the model side ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._active or self._stopping):
                    self._cv.wait()
                if self._stopping and not self._active and not self._waiting:
                    return
            self._drop_cancelled()
            self._admit()
            try:
                with torch.no_grad():
                    self._tick()
            except Exception as e:  # a failed step fails its batch, never the server
                for seq in list(self._active):
                    self._finish(seq, "error", f"{type(e).__name__}: {e}")
                self._compact()

    def _admit(self) -> None:
        with self._cv:
            while self._waiting and len(self._active) < self.decoder.rows:
                seq = self._waiting.popleft()
                if seq.cancelled:
                    self._finish(seq, "cancelled")
                    continue
                seq.row = len(self._active)
                self._active.append(seq)

    def _drop_cancelled(self) -> None:
        with self._cv:
            for seq in [s for s in self._waiting if s.cancelled]:
                self._waiting.remove(seq)
                self._finish(seq, "cancelled")
        for seq in self._active:
            if seq.cancelled and not seq.done:
                self._finish(seq, "cancelled")
        self._compact()

    def _compact(self) -> None:
        """Remove finished sequences; the last running row moves into each freed one."""
        with self._cv:
            while True:
                gone = next((s for s in self._active if s.done), None)
                if gone is None:
                    return
                last = self._active.pop()
                if last is not gone:
                    self.decoder.move_row(last.row, gone.row)
                    last.row = gone.row
                    self._active[gone.row] = last

    def _tick(self) -> None:
        reading = next((s for s in self._active if s.prefilled < len(s.prompt)), None)
        if reading is not None:
            self._prefill_chunk(reading)
        decoding = [s for s in self._active if s.next_token is not None and not s.done]
        if decoding:
            self._decode(decoding)
        self._compact()

    def _prefill_chunk(self, seq: Sequence) -> None:
        start = seq.prefilled
        ids = torch.tensor(seq.prompt[start : start + self.prefill_chunk], device=self.model.device)
        logits = self.decoder.prefill(seq.row, ids, start, self._depth(seq))
        seq.prefilled += ids.shape[0]
        if self.metrics is not None:
            self.metrics.add("parcae_prompt_tokens_total", ids.shape[0])
        if seq.prefilled == len(seq.prompt):
            self._accept(seq, logits[None, : self.vocab], self._depth(seq))

    def _decode(self, decoding: list[Sequence]) -> None:
        n, idle = len(self._active), self.decoder.idle_position
        device = self.model.device
        tokens = torch.zeros(n, dtype=torch.long)
        positions = torch.full((n,), idle, dtype=torch.long)
        steps = torch.ones(n, dtype=torch.long)
        thresholds = torch.zeros(n)
        for seq in decoding:
            tokens[seq.row], positions[seq.row] = seq.next_token, seq.position
            steps[seq.row], thresholds[seq.row] = self._depth(seq), seq.params.exit_threshold
        logits, iterations = self.decoder.step(
            tokens.to(device), positions.to(device), steps.to(device), thresholds.to(device)
        )
        if self.metrics is not None:
            self.metrics.add("parcae_decode_steps_total")
        logits, iterations = logits[:, : self.vocab].float().cpu(), iterations.cpu()
        for seq in decoding:
            self._accept(seq, logits[seq.row : seq.row + 1], int(iterations[seq.row]))

    def _depth(self, seq: Sequence) -> int:
        return self.depth if seq.params.recurrence is None else seq.params.recurrence

    def _accept(self, seq: Sequence, logits: Tensor, iterations: int) -> None:
        """Sample the next token from `logits` [1, V], record it, stream what text is final, finish if due."""
        p = seq.params
        token = int(sample_next(logits, p.temperature, p.top_k, p.top_p, seq.generator)[0])
        seq.iterations.append(iterations)
        if self.metrics is not None:
            self.metrics.add("parcae_generated_tokens_total")
            self.metrics.add("parcae_recurrence_iterations_total", iterations)
        if token == self.tokenizer.eos_id:  # the end of the text: not part of it
            self._flush(seq, final=True)
            self._finish(seq, "stop")
            return
        seq.generated.append(token)
        seq.pending_ids.append(token)
        seq.pending_iterations.append(iterations)
        if p.logprobs is not None:
            seq.pending_logprobs.append(self._logprob(logits[0], token, p.logprobs))
        stopped = self._flush(seq, final=len(seq.generated) >= p.max_tokens)
        if stopped:
            self._finish(seq, "stop")
        elif len(seq.generated) >= p.max_tokens:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _logprob(self, logits: Tensor, token: int, k: int) -> TokenLogprob:
        lp = torch.log_softmax(logits, dim=-1)
        alternatives: dict[str, float] = {}
        if k > 0:  # best first; tokens whose text is the same (partial characters) keep the best one
            for v, i in zip(*torch.topk(lp, min(k, lp.shape[-1]))):
                alternatives.setdefault(self._text(int(i)), float(v))
        return TokenLogprob(self._text(token), float(lp[token]), alternatives)

    def _text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _flush(self, seq: Sequence, final: bool) -> bool:
        """Send the text that is settled (complete characters, not a possible start of a stop string);
        returns whether a stop string appeared (the text is cut before it)."""
        text = self.tokenizer.decode(seq.generated)
        found = [text.find(s, max(0, seq.sent_chars - len(s))) for s in seq.params.stop]
        stop_at = min((i for i in found if i >= 0), default=-1)
        if stop_at >= 0:
            safe, final = stop_at, True
        elif final:
            safe = len(text)
        else:
            safe = len(text)
            if text.endswith("\ufffd"):  # the rest of a multi-byte character is still to come
                safe = len(text.rstrip("\ufffd"))
            for s in seq.params.stop:  # hold back a possible beginning of a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[safe - k : safe] == s[:k]:
                        safe -= k
                        break
        if safe > seq.sent_chars or (final and seq.pending_ids):
            chunk = Chunk(
                text[seq.sent_chars : max(safe, seq.sent_chars)],
                seq.pending_ids,
                seq.pending_iterations,
                seq.pending_logprobs if seq.params.logprobs is not None else None,
            )
            seq.sent_chars = max(safe, seq.sent_chars)
            seq.pending_ids, seq.pending_iterations, seq.pending_logprobs = [], [], []
            seq.emit(chunk)
        return stop_at >= 0

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.done:
            return
        seq.done = True
        if reason == "cancelled" and self.metrics is not None:
            self.metrics.add("parcae_requests_cancelled_total")
        tokens = len(seq.iterations)  # every sampled token, an end-of-text one included
        seq.emit(Finished(reason, len(seq.prompt), tokens, sum(seq.iterations), error))


def wait_idle(scheduler: Scheduler, timeout: float = 10.0) -> bool:
    """Wait until nothing runs or waits (tests, draining); returns whether it got there in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scheduler.counts() == (0, 0):
            return True
        time.sleep(0.01)
    return False
