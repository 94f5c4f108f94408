"""Exact-match accuracy on the synthetic reasoning tasks, by task, difficulty and test-time depth.

A problem is solved when the greedy continuation of its prompt is its answer. Teacher-forced argmax over
the answer positions decides the same thing in one forward: if every answer token is the argmax given the
correct prefix, greedy decoding writes exactly the answer; at the first token that is not, greedy decoding
leaves the answer too. So every problem costs one forward per depth, batched by (task, difficulty), whose
problems have equal lengths (no padding).

A depth sweep of a looped model runs the loop once, up to the deepest depth asked for, and reads the state
out (C → coda → head) after each requested iteration: the same numbers as `model(x, num_steps=T)` for
every T, at the cost of the deepest one. The model's own pieces do the work (`Parcae.prelude`,
`initial_state`, `core_step`, `coda`, `head`), so nothing here re-implements a block or the injection.
Along the way each readout records the state norm ‖h_T‖, the residual ‖h_T − h_{T−1}‖ and its relative
size (means over every position of the batch).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from parcae_lm.config.train import ReasoningTask
from parcae_lm.data.reasoning import (
    TEST_PER_DIFFICULTY,
    Example,
    encode_example,
    held_out_problems,
    task_spec,
)
from parcae_lm.errors import EvalError
from parcae_lm.model import LanguageModel, Parcae
from parcae_lm.tokenizer import Tokenizer

Depth = int | None  # None: the model's own depth (GPT, or Parcae at its mean recurrence)


@dataclass(frozen=True)
class ProblemBatch:
    """Problems of one task and difficulty, as one [B, L] input (equal lengths, no padding)."""

    task: ReasoningTask
    difficulty: int
    x: Tensor  # [B, L] BOS + prompt + answer (the last answer token's successor, EOS, is a target only)
    targets: Tensor  # [B, A + 1]: the answer ids and the EOS
    start: int  # the position whose prediction is the first answer token


def problem_batches(problems: Sequence[Example], tokenizer: Tokenizer, batch_size: int) -> list[ProblemBatch]:
    """`problems` grouped by (task, difficulty) in their order of appearance, in batches of ≤ batch_size."""
    if batch_size < 1:
        raise EvalError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[ReasoningTask, int, int], list[tuple[list[int], int]]] = {}
    for ex in problems:
        ids, n_prompt = encode_example(ex, tokenizer)
        groups.setdefault((ex.task, ex.difficulty, len(ids)), []).append((ids, n_prompt))
    out = []
    for (task, difficulty, _), rows in groups.items():
        if len({n for _, n in rows}) != 1:
            raise EvalError(
                f"{task.value} difficulty {difficulty}: problems of one length must share prompt lengths"
            )
        n_prompt = rows[0][1]
        for b in range(0, len(rows), batch_size):
            ids = torch.tensor([r[0] for r in rows[b : b + batch_size]], dtype=torch.long)
            out.append(ProblemBatch(task, difficulty, ids[:, :-1], ids[:, n_prompt:], n_prompt - 1))
    return out


@dataclass(frozen=True)
class Readout:
    """What one depth of one batch gives: answer logits and the loop's state statistics."""

    depth: Depth
    logits: Tensor  # [B, A + 1, V] fp32 at the answer and EOS positions
    state_norm: float | None = None  # mean ‖h_T‖ over positions (looped models)
    residual: float | None = None  # mean ‖h_T − h_{T−1}‖
    rel_residual: float | None = None  # mean ‖h_T − h_{T−1}‖ / ‖h_T‖


@torch.no_grad()
def readouts(model: LanguageModel, batch: ProblemBatch, depths: Sequence[Depth]) -> Iterator[Readout]:
    """The batch's answer logits at every depth (ascending for a looped model; [None] for GPT)."""
    x = batch.x.to(model.device)
    span = slice(batch.start, batch.start + batch.targets.shape[1])
    if not isinstance(model, Parcae):
        if any(d is not None for d in depths):
            raise EvalError("test-time depths only apply to looped (Parcae) models")
        logits = model(x)["logits"][:, span]
        yield Readout(None, _real_vocab(model, logits))
        return
    wanted = sorted({model.config.mean_recurrence if d is None else int(d) for d in depths})
    if wanted[0] < 1:
        raise EvalError(f"test-time depths must be >= 1, got {wanted[0]}")
    ctx, ctx_core = model.contexts(x.shape[1], x.device)
    e = model.prelude(x, ctx)
    h, u, ves = model.initial_state(e), model.transformer.adapter.prepare(e), model.core_values(x)
    for t in range(1, wanted[-1] + 1):
        new = model.core_step(h, u, ves, ctx_core)
        if t in wanted:
            norm = new.float().norm(dim=-1)
            change = (new - h).float().norm(dim=-1)
            y = model.coda(new, x, ctx)[:, span]
            logits = model.head(y, None, True)["logits"]
            yield Readout(
                t,
                _real_vocab(model, logits),
                float(norm.mean()),
                float(change.mean()),
                float((change / norm.clamp_min(1e-12)).mean()),
            )
        h = new


def _real_vocab(model: LanguageModel, logits: Tensor) -> Tensor:
    logits = logits[..., : model.config.vocab_size].float()
    if not torch.isfinite(logits).all():
        raise EvalError("the model produced non-finite logits (NaN/inf) on a reasoning problem")
    return logits


class ExitRule(enum.StrEnum):
    """When a problem stops iterating (checked after every iteration r ≥ min_steps, for each problem)."""

    fixed = "fixed"  # never early: max_steps iterations (the baseline)
    state = "state"  # the state moved little: max over answer positions of ‖h_r − h_{r−1}‖/‖h_r‖ < τ
    kl = "kl"  # the answer stopped changing: max over answer positions of KL(p_r ‖ p_{r−1}) < τ (nats)
    confidence = "confidence"  # the answer is sure: min over answer positions of max p_r ≥ τ


@dataclass(frozen=True)
class Exit:
    """A per-problem exit: `rule` with threshold τ, between min_steps and max_steps iterations. The kl and
    confidence rules read the answer out (C → coda → head) after every iteration, which costs a coda per
    iteration on top of the core; the state rule costs one norm."""

    rule: ExitRule
    threshold: float = 0.0
    max_steps: int = 32
    min_steps: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.rule, ExitRule):
            raise EvalError(
                f"exit rule must be one of {', '.join(r.value for r in ExitRule)}, got {self.rule!r}"
            )
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise EvalError(f"exit threshold must be a finite number >= 0, got {self.threshold}")
        if self.rule == ExitRule.confidence and self.threshold > 1:
            raise EvalError(f"a confidence threshold is a probability in [0, 1], got {self.threshold}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise EvalError(f"need 1 <= min_steps <= max_steps, got {self.min_steps} and {self.max_steps}")


@torch.no_grad()
def adaptive_readout(model: Parcae, batch: ProblemBatch, exit: Exit) -> tuple[Readout, Tensor]:
    """Iterate each problem of the batch until its exit fires; returns the answer logits (each problem's
    at its own depth) and the depths [B]. Problems that exited stop running: every iteration computes the
    core only on the rows still active, so compute follows the sum of the depths used."""
    if not isinstance(model, Parcae):
        raise EvalError("adaptive depth needs a looped (Parcae) model")
    x = batch.x.to(model.device)
    B, L = x.shape
    span = slice(batch.start, batch.start + batch.targets.shape[1])
    ctx, ctx_core = model.contexts(L, x.device)
    e = model.prelude(x, ctx)
    h, u, ves = model.initial_state(e), model.transformer.adapter.prepare(e), model.core_values(x)
    probe = exit.rule in (ExitRule.kl, ExitRule.confidence)
    logits = torch.empty(B, span.stop - span.start, model.config.vocab_size, device=x.device)
    depth = torch.zeros(B, dtype=torch.long, device=x.device)
    active = torch.arange(B, device=x.device)
    prev: Tensor | None = None  # log-probabilities of the active rows' last probe
    for r in range(1, exit.max_steps + 1):
        full = active.numel() == B
        sub_ctx, sub_core = (ctx, ctx_core) if full else (ctx.subset(active), ctx_core.subset(active))
        old = h if full else h[active]
        sub_ves = ves if full else [None if v is None else v[active] for v in ves]
        new = model.core_step(old, u if full else u[active], sub_ves, sub_core)
        depth[active] += 1
        done = torch.full((active.numel(),), r == exit.max_steps, device=x.device)
        check = r >= exit.min_steps
        if exit.rule == ExitRule.state and check:
            change = (new - old)[:, span].float().norm(dim=-1) / new[:, span].float().norm(dim=-1).clamp_min(
                1e-12
            )
            done |= change.amax(dim=1) < exit.threshold
        if probe:
            y = model.coda(new, x if full else x[active], sub_ctx)[:, span]
            logp = F.log_softmax(_real_vocab(model, model.head(y, None, True)["logits"]), dim=-1)
            logits[active] = logp
            if exit.rule == ExitRule.kl and check and prev is not None:
                done |= (logp.exp() * (logp - prev)).sum(-1).amax(dim=1) < exit.threshold
            elif exit.rule == ExitRule.confidence and check:
                done |= logp.amax(dim=-1).exp().amin(dim=1) >= exit.threshold
            prev = logp[~done]
        if full:
            h = new
        else:
            h[active] = new
        active = active[~done]
        if active.numel() == 0:
            break
    if not probe:
        logits = _real_vocab(model, model.head(model.coda(h, x, ctx)[:, span], None, True)["logits"])
    return Readout(None, logits), depth


@dataclass
class AdaptiveCell:
    """Accuracy and mean iterations of one (task, difficulty) under one exit."""

    task: str
    difficulty: int
    trained: bool
    rule: str
    threshold: float
    max_steps: int
    problems: int = 0
    correct: int = 0
    iterations: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.problems, 1)

    @property
    def mean_iterations(self) -> float:
        return self.iterations / max(self.problems, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy, "mean_iterations": self.mean_iterations}


def evaluate_adaptive(
    model: Parcae,
    problems: Sequence[Example],
    tokenizer: Tokenizer,
    exits: Sequence[Exit],
    batch_size: int = 256,
) -> list[AdaptiveCell]:
    """One AdaptiveCell per (task, difficulty, exit) of `problems`."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in problem_batches(problems, tokenizer, batch_size):
            trained = batch.difficulty in task_spec(batch.task).train_difficulties
            for ex in exits:
                readout, depth = adaptive_readout(model, batch, ex)
                answer = batch.targets[:, :-1].to(readout.logits.device)
                correct = (readout.logits[:, :-1].argmax(-1) == answer).all(dim=1)
                key = (batch.task.value, batch.difficulty, ex.rule.value, ex.threshold, ex.max_steps)
                cell = next(
                    (c for c in out if (c.task, c.difficulty, c.rule, c.threshold, c.max_steps) == key), None
                )
                if cell is None:
                    cell = AdaptiveCell(*key[:2], trained, *key[2:])
                    out.append(cell)
                cell.problems += depth.numel()
                cell.correct += int(correct.sum())
                cell.iterations += int(depth.sum())
    finally:
        model.train(was_training)
    return out


@dataclass
class Cell:
    """Accuracy and answer loss of one (task, difficulty, depth)."""

    task: str
    difficulty: int
    trained: bool  # the difficulty is in the task's training range
    depth: int | None
    problems: int = 0
    correct: int = 0
    nats: float = 0.0  # summed over answer and EOS tokens
    tokens: int = 0
    state_norm: float | None = None
    residual: float | None = None
    rel_residual: float | None = None

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.problems, 1)

    @property
    def loss(self) -> float:
        return self.nats / max(self.tokens, 1)

    def add(self, out: Readout, targets: Tensor) -> None:
        n = targets.shape[0]
        answer = targets[:, :-1].to(out.logits.device)
        self.correct += int((out.logits[:, :-1].argmax(-1) == answer).all(dim=1).sum())
        nll = F.cross_entropy(out.logits.transpose(1, 2), targets.to(out.logits.device), reduction="sum")
        self.nats += float(nll)
        self.tokens += targets.numel()
        for key in ("state_norm", "residual", "rel_residual"):
            value = getattr(out, key)
            if value is not None:  # a running mean over problems
                old = getattr(self, key) or 0.0
                setattr(self, key, old + (value - old) * n / (self.problems + n))
        self.problems += n

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy, "loss": self.loss}


def evaluate(
    model: LanguageModel,
    problems: Sequence[Example],
    tokenizer: Tokenizer,
    depths: Sequence[Depth] = (None,),
    batch_size: int = 256,
    max_batches: int | None = None,
) -> list[Cell]:
    """One Cell per (task, difficulty, depth) of `problems`, at every depth (GPT: [None])."""
    was_training = model.training
    model.eval()
    cells: dict[tuple[str, int, Depth], Cell] = {}
    try:
        for i, batch in enumerate(problem_batches(problems, tokenizer, batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            trained = batch.difficulty in task_spec(batch.task).train_difficulties
            for out in readouts(model, batch, depths):
                key = (batch.task.value, batch.difficulty, out.depth)
                cell = cells.setdefault(key, Cell(batch.task.value, batch.difficulty, trained, out.depth))
                cell.add(out, batch.targets)
    finally:
        model.train(was_training)
    return list(cells.values())


def summarise(cells: Sequence[Cell]) -> dict[str, float]:
    """Flat metrics per depth: answer loss, bits per answer character, accuracy over the trained and the
    harder-than-trained difficulties, and accuracy per task (trained difficulties). Keys end in _d<T> for
    a looped model (`loss_d4`, `acc_d4`, `acc_beyond_d4`, `acc_chase_d4`), without a suffix for GPT."""
    out: dict[str, float] = {}
    for depth in sorted({c.depth for c in cells}, key=lambda d: -1 if d is None else d):
        at = [c for c in cells if c.depth == depth]
        suffix = "" if depth is None else f"_d{depth}"
        nats, tokens = sum(c.nats for c in at), sum(c.tokens for c in at)
        # One token per character, so nats per answer token over ln 2 is bits per answer byte.
        out[f"loss{suffix}"] = nats / max(tokens, 1)
        out[f"bpb{suffix}"] = nats / max(tokens, 1) / math.log(2)
        for name, group in (
            ("acc", [c for c in at if c.trained]),
            ("acc_beyond", [c for c in at if not c.trained]),
        ):
            if group:
                out[f"{name}{suffix}"] = sum(c.accuracy for c in group) / len(group)
        for task in sorted({c.task for c in at}):
            group = [c for c in at if c.task == task and c.trained]
            if group:
                out[f"acc_{task}{suffix}"] = sum(c.accuracy for c in group) / len(group)
    return out


class ReasoningValidator:
    """Validation of a run on reasoning tasks: the held-out problems of its tasks, scored at each depth
    (same interface as the text validator, `parcae_lm.train.validate.Validator`). Every rank scores every
    problem (the set is small), so no collective is needed."""

    def __init__(
        self,
        tasks: Sequence[ReasoningTask],
        tokenizer: Tokenizer,
        batch_size: int,
        per_difficulty: int = TEST_PER_DIFFICULTY,
    ) -> None:
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.problems = held_out_problems(tasks, per_difficulty)
        self.cells = len({(ex.task, ex.difficulty) for ex in self.problems})

    def __call__(
        self, model: nn.Module, depths: Sequence[Depth], max_batches: int | None
    ) -> dict[str, float]:
        """Metrics of `summarise` over the held-out problems. With `max_batches`, over about that many
        batches' worth of them, taken evenly from every (task, difficulty): the first of each."""
        problems = self.problems if max_batches is None else self._subset(max_batches)
        return summarise(evaluate(_language_model(model), problems, self.tokenizer, depths, self.batch_size))

    def _subset(self, batches: int) -> list[Example]:
        keep = max(1, batches * self.batch_size // self.cells)
        seen: dict[tuple[ReasoningTask, int], int] = {}
        out = []
        for ex in self.problems:
            key = (ex.task, ex.difficulty)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= keep:
                out.append(ex)
        return out

    def seconds_for_full_split(self, model: nn.Module, depths: Sequence[Depth]) -> float:
        """An estimate of a whole evaluation: a timed one-batch evaluation (after an untimed one) scaled to
        all problems, plus 15%."""
        self(model, depths, max_batches=1)
        t = time.perf_counter()
        self(model, depths, max_batches=1)
        return (time.perf_counter() - t) * len(self.problems) / len(self._subset(1)) * 1.15


def _language_model(model: nn.Module) -> LanguageModel:
    # DDP adds collectives to every forward; scoring needs none, so use the module (FSDP2 shards in place).
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    if not isinstance(inner, LanguageModel):
        raise EvalError(f"expected a parcae-lm model, got {type(inner).__name__}")
    return inner
