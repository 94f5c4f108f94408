"""Synthetic reasoning tasks: problems that need serial computation, generated from a seed, scored by exact match.

Three kinds of serial computation, each with a difficulty knob d (how many serial steps a solution takes):

| task    | prompt → answer                  | d                        | train d | test d |
|---------|----------------------------------|--------------------------|---------|--------|
| `chase` | `k=3,b=k,x=b,q=7,m=q?x` → `3`    | hops from query to value | 0–3     | 0–7    |
| `add`   | `0472+1395=` → `01867`           | digits per operand       | 1–4     | 1–8    |
| `swaps` | `c|ab,cd,bc?` → `d`              | swaps of five cups       | 1–6     | 1–12   |

- `chase`: variable chasing. Twelve single-letter variables, four of them set to distinct digits, the
  others to another variable, listed in random order; the queried variable is d copies away from its
  digit. The prompt length and the digits present do not depend on d (distractor assignments fill the
  prompt up), so difficulty is not visible from the prompt's surface; chance is 1/4.
- `add`: two d-digit numbers (leading zeros allowed), their sum written most significant digit first with
  d + 1 digits, so its first digit depends on the whole carry chain.
- `swaps`: a ball starts under one of five cups a–e; d swaps of two cups follow; where is the ball?
  (state tracking; chance is 1/5).

Text is tokenised one character per token: the vocabulary is fixed — the three special tokens and the
256 bytes (`reasoning_tokenizer`), of which the tasks use 43. A training row is BOS + prompt + answer +
EOS, right-padded; only the answer and the EOS are targets (the prompt is random by construction).

Every example comes from a seeded generator: `example(task, d, seed, *stream)` is a pure function of its
arguments. Test sets (`held_out_problems`) use their own seed, so every run is scored on the same problems, and the
training loader (`ReasoningLoader`) never yields a problem that is in the test set (except at the few
difficulties small enough for the test set to be a good part of all there is: one-digit sums, single swaps).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from parcae_lm.config.train import ReasoningTask
from parcae_lm.errors import DataError
from parcae_lm.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, Tokenizer

IGNORE_INDEX = -100
TEST_SEED = 20260414  # the test sets' seed, shared by every run
TEST_PER_DIFFICULTY = 100  # test problems per (task, difficulty) by default


class _Stream(enum.IntEnum):
    """Separate random streams, so a training problem never shares its generator with a test problem."""

    TRAIN = 1
    TEST = 2


@dataclass(frozen=True)
class Example:
    task: ReasoningTask
    difficulty: int
    prompt: str
    answer: str


# ---------------------------------------------------------------------- the tasks

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
CHASE_VARIABLES = 10  # assignments per chase prompt, whatever the difficulty
CHASE_ROOTS = 3  # of them set to a digit (distinct digits)
CUPS = "abcde"


def _chase(rng: np.random.Generator, hops: int) -> tuple[str, str]:
    """CHASE_ROOTS variables set to distinct digits; the query sits `hops` copies below one of them; the
    other variables copy a random earlier one. Statements in random order."""
    if not 0 <= hops <= CHASE_VARIABLES - CHASE_ROOTS:
        raise DataError(f"chase: hops must be in [0, {CHASE_VARIABLES - CHASE_ROOTS}], got {hops}")
    names = [_LETTERS[i] for i in rng.permutation(len(_LETTERS))[:CHASE_VARIABLES]]
    digits = [str(d) for d in rng.permutation(10)[:CHASE_ROOTS]]
    # The root count and their digits are the same at every difficulty: counting the digits in the prompt
    # tells nothing about the answer (chance is 1/CHASE_ROOTS).
    chain, roots, rest = names[: hops + 1], names[hops + 1 : hops + CHASE_ROOTS], names[hops + CHASE_ROOTS :]
    lines = [f"{chain[0]}={digits[0]}"] + [f"{chain[i]}={chain[i - 1]}" for i in range(1, hops + 1)]
    lines += [f"{name}={digit}" for name, digit in zip(roots, digits[1:])]
    defined = chain[:-1] + roots  # the query itself stays a leaf
    for name in rest:
        lines.append(f"{name}={defined[rng.integers(len(defined))]}")
        defined.append(name)
    order = rng.permutation(len(lines))
    return ",".join(lines[i] for i in order) + f"?{chain[-1]}", digits[0]


def _add(rng: np.random.Generator, digits: int) -> tuple[str, str]:
    if digits < 1:
        raise DataError(f"add: digits must be >= 1, got {digits}")
    a, b = (rng.integers(10, size=digits) for _ in range(2))
    x, y = (int("".join(map(str, v))) for v in (a, b))
    return f"{x:0{digits}d}+{y:0{digits}d}=", f"{x + y:0{digits + 1}d}"


def _swaps(rng: np.random.Generator, swaps: int) -> tuple[str, str]:
    if swaps < 1:
        raise DataError(f"swaps: the number of swaps must be >= 1, got {swaps}")
    ball = CUPS[rng.integers(len(CUPS))]
    start, moves = ball, []
    for _ in range(swaps):
        i, j = rng.choice(len(CUPS), size=2, replace=False)
        a, b = CUPS[i], CUPS[j]
        moves.append(a + b)
        ball = b if ball == a else a if ball == b else ball
    return f"{start}|{','.join(moves)}?", ball


@dataclass(frozen=True)
class TaskSpec:
    """A task: how to make one problem of difficulty d, and the difficulties trained and tested."""

    make: Callable[[np.random.Generator, int], tuple[str, str]]
    train: tuple[int, int]  # inclusive range of training difficulties
    test: tuple[int, int]  # inclusive range of test difficulties (beyond train: extrapolation)
    unit: str  # what the difficulty counts
    count: Callable[[int], int]  # how many distinct problems there are at difficulty d (a lower bound)

    @property
    def train_difficulties(self) -> list[int]:
        return list(range(self.train[0], self.train[1] + 1))

    @property
    def test_difficulties(self) -> list[int]:
        return list(range(self.test[0], self.test[1] + 1))


TASKS: dict[ReasoningTask, TaskSpec] = {
    ReasoningTask.chase: TaskSpec(_chase, (0, 3), (0, 7), "hops", lambda d: math.perm(26, CHASE_VARIABLES)),
    ReasoningTask.add: TaskSpec(_add, (1, 4), (1, 8), "digits", lambda d: 100**d),
    ReasoningTask.swaps: TaskSpec(_swaps, (1, 6), (1, 12), "swaps", lambda d: len(CUPS) * 20**d),
}
# A difficulty's test problems are kept out of training when they are at most this fraction of all its
# problems; below that (one-digit sums, single swaps) the test problems are simply all there is.
MAX_HELD_OUT_FRACTION = 0.1


def task_spec(task: ReasoningTask | str) -> TaskSpec:
    try:
        return TASKS[ReasoningTask(task)]
    except ValueError:
        raise DataError(
            f"unknown reasoning task {task!r}; known: {', '.join(t.value for t in TASKS)}"
        ) from None


def example(task: ReasoningTask | str, difficulty: int, seed: int, *stream: int) -> Example:
    """The problem of `task` at `difficulty` drawn from the generator seeded by (seed, *stream)."""
    name = ReasoningTask(task)
    rng = np.random.default_rng([seed, *stream])
    prompt, answer = TASKS[name].make(rng, difficulty)
    return Example(name, difficulty, prompt, answer)


def held_out_problems(
    tasks: Sequence[ReasoningTask | str],
    per_difficulty: int = TEST_PER_DIFFICULTY,
    difficulties: dict[ReasoningTask, Sequence[int]] | None = None,
    seed: int = TEST_SEED,
) -> list[Example]:
    """`per_difficulty` distinct problems for every task and test difficulty (or the given difficulties),
    in (task, difficulty) order. Duplicates are skipped (the smallest difficulties have few problems)."""
    out = []
    for task in tasks:
        name = ReasoningTask(task)
        levels = (difficulties or {}).get(name, task_spec(name).test_difficulties)
        for d in levels:
            seen: set[str] = set()
            for i in range(50 * per_difficulty):
                if len(seen) == per_difficulty:
                    break
                ex = example(name, d, seed, _Stream.TEST, _task_index(name), d, i)
                if ex.prompt not in seen:
                    seen.add(ex.prompt)
                    out.append(ex)
    return out


def sample_problems(tasks: Sequence[ReasoningTask | str]) -> list[Example]:
    """One held-out problem per task, at its hardest training difficulty (what a run's samples.txt answers)."""
    return [held_out_problems([t], 1, {ReasoningTask(t): [task_spec(t).train[1]]})[0] for t in tasks]


def _task_index(task: ReasoningTask) -> int:
    return list(ReasoningTask).index(task)


# ---------------------------------------------------------------------- tokenisation


def reasoning_tokenizer() -> Tokenizer:
    """One token per byte: the special tokens at ids 0, 1, 2, then byte b at id 3 + b (no merges)."""
    alphabet = _byte_alphabet()
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({alphabet[b]: len(SPECIAL_TOKENS) + b for b in range(256)})
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(SPECIAL_TOKENS)
    return Tokenizer(hf, bos=BOS_TOKEN, eos=EOS_TOKEN, pad=PAD_TOKEN)


def _byte_alphabet() -> list[str]:
    """The byte-level pre-tokenizer's printable stand-in for each byte (printable Latin-1 bytes stand for
    themselves, the rest are shifted past U+0100), indexed by byte value."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def encode_example(ex: Example, tokenizer: Tokenizer) -> tuple[list[int], int]:
    """(BOS + prompt + answer + EOS ids, number of prompt ids incl. BOS). Checks one token per character."""
    prompt = tokenizer.encode(ex.prompt, bos=True)
    answer = tokenizer.encode(ex.answer, eos=True)
    if len(prompt) != len(ex.prompt) + 1 or len(answer) != len(ex.answer) + 1:
        raise DataError(
            f"{ex.task.value} problem {ex.prompt!r}: the tokenizer is not one token per character"
        )
    return prompt + answer, len(prompt)


def example_length(ex: Example) -> int:
    """Input positions the example needs: BOS + prompt + answer (the EOS is only a target)."""
    return 1 + len(ex.prompt) + len(ex.answer)


def collate(
    examples: Sequence[Example], tokenizer: Tokenizer, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) LongTensors [len(examples), seq_len]: inputs right-padded with the pad id, targets IGNORE_INDEX
    everywhere except the answer and the EOS after it."""
    x = torch.full((len(examples), seq_len), tokenizer.pad_id, dtype=torch.long)
    y = torch.full((len(examples), seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, ex in enumerate(examples):
        ids, n_prompt = encode_example(ex, tokenizer)
        if len(ids) - 1 > seq_len:
            raise DataError(
                f"{ex.task.value} problem of difficulty {ex.difficulty} needs {len(ids) - 1} positions, more "
                f"than data.seq_len={seq_len}"
            )
        x[row, : len(ids) - 1] = torch.tensor(ids[:-1])
        y[row, n_prompt - 1 : len(ids) - 1] = torch.tensor(ids[n_prompt:])
    return x, y


def min_seq_len(tasks: Sequence[ReasoningTask | str], test: bool = True) -> int:
    """The positions the longest problem of these tasks needs (at the test difficulties, or the train ones)."""
    longest = 0
    for task in tasks:
        spec = task_spec(task)
        d = spec.test[1] if test else spec.train[1]
        longest = max(longest, example_length(example(task, d, 0)))
    return longest


# ---------------------------------------------------------------------- the training stream


class ReasoningLoader:
    """An endless iterator of (x, y) batches [batch_size, seq_len] of training problems.

    Each row draws a task uniformly from `tasks`, then a difficulty uniformly from that task's training
    range, then the problem, all from a generator seeded by (seed, global batch index, row). Rank r's k-th
    batch is global batch k·world_size + r (as `TokenLoader` shards), so a run is reproducible however it
    is split across processes. Problems that are in the test set are redrawn (at difficulties with enough
    problems: see MAX_HELD_OUT_FRACTION). `state_dict()` records the position; `load_state_dict()` resumes
    exactly there.
    """

    def __init__(
        self,
        tasks: Sequence[ReasoningTask | str],
        batch_size: int,
        seq_len: int,
        tokenizer: Tokenizer,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if not tasks:
            raise DataError("reasoning data needs at least one task")
        self.tasks = [ReasoningTask(t) for t in tasks]
        need = min_seq_len(self.tasks, test=False)
        if seq_len < need:
            raise DataError(
                f"data.seq_len={seq_len} is too short for the training problems of "
                f"{', '.join(t.value for t in self.tasks)}: they need {need}"
            )
        self.batch_size, self.seq_len, self.tokenizer = batch_size, seq_len, tokenizer
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.batch_index = 0
        self._held_out: dict[tuple[ReasoningTask, int], set[str]] = {}
        for ex in held_out_problems(self.tasks):
            self._held_out.setdefault((ex.task, ex.difficulty), set()).add(ex.prompt)
        for (task, d), prompts in list(self._held_out.items()):
            if len(prompts) > MAX_HELD_OUT_FRACTION * TASKS[task].count(d):
                del self._held_out[(task, d)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.batch_index * self.world_size + self.rank
        rows = [self._row(g, r) for r in range(self.batch_size)]
        self.batch_index += 1
        return collate(rows, self.tokenizer, self.seq_len)

    def _row(self, batch: int, row: int) -> Example:
        rng = np.random.default_rng([self.seed, _Stream.TRAIN, batch, row])
        task = self.tasks[rng.integers(len(self.tasks))]
        lo, hi = TASKS[task].train
        d = int(rng.integers(lo, hi + 1))
        held_out = self._held_out.get((task, d), set())
        for _ in range(1000):  # a redraw keeps the task and difficulty, so their mix stays uniform
            prompt, answer = TASKS[task].make(rng, d)
            if prompt not in held_out:
                return Example(task, d, prompt, answer)
        raise DataError(f"could not draw a {task.value} problem of difficulty {d} outside the test set")

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch_index": self.batch_index,
            "tasks": [t.value for t in self.tasks],
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        for key in ("tasks", "seed", "rank", "world_size", "batch_size", "seq_len"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"cannot resume the reasoning loader: {key} was {state.get(key)!r} when saved, now {mine[key]!r}"
                )
        k = state.get("batch_index")
        if not isinstance(k, int) or k < 0:
            raise DataError(f"invalid reasoning loader position {k!r}")
        self.batch_index = k
