"""CORE and Core-Extended scoring (DCLM's in-context-learning protocol, as nanochat and the reference run it).

Per task: shuffle the examples with Random(1337) (then keep the first --max_per_task), render each one
after k few-shot demonstrations drawn with Random(seed + index) from the task's other examples, prepend
BOS, left-truncate to the model's block size, and score:

- multiple choice: prompts "{query}{delim}{choice}"; the span where the choices' tokens differ (after
  their common prefix) is scored; the choice with the lowest mean loss wins.
- schema: prompts "{context_option}{delim}{continuation}"; the common token suffix is scored; lowest
  mean loss wins.
- language modelling: "{context}{delim}{continuation}"; correct iff the greedy argmax reproduces every
  continuation token.

Each task is centred as (acc - b) / (1 - b), CORE is the mean over the evaluated CORE tasks, Core-Extended
the mean over all evaluated tasks, both averaged over the seeds (population std reported too).
Sequences of many examples are scored together in right-padded batches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from parcae_lm.errors import EvalError
from parcae_lm.eval.bundle import EvalBundle, Example, LMExample, MCExample, SchemaExample
from parcae_lm.eval.common import (
    EvalTokenizer,
    bos_token,
    forward_logits,
    mean_std,
    model_device,
    pad_right,
    pad_token,
    wilson_interval,
)
from parcae_lm.eval.tasks import CORE_LABELS, DEFAULT_SEEDS, Suite, TaskSpec, suite_tasks

SHUFFLE_SEED = 1337
FEWSHOT_SEPARATOR = "\n\n"


# ------------------------------------------------------------------------------------------- prompts


def fewshot_indices(n: int, idx: int, k: int, seed: int) -> list[int]:
    """k distinct indices in [0, n) other than idx, drawn with Random(seed + idx).

    Same draw as `Random(seed + idx).sample([i for i in range(n) if i != idx], k)` without building that
    list for every example (quadratic on 40k-example tasks): sample positions in range(n - 1), then skip idx.
    """
    k = min(k, n - 1)
    if k <= 0:
        return []
    return [j + (j >= idx) for j in random.Random(seed + idx).sample(range(n - 1), k)]


def render_prompts(ex: Example, delim: str, shots: Sequence[Example]) -> list[str]:
    """The prompt strings of one example (one per choice / context option; [without, with] for LM)."""
    if isinstance(ex, MCExample):
        head = "".join(f"{s.query}{delim}{s.choices[s.gold]}{FEWSHOT_SEPARATOR}" for s in shots)  # type: ignore[union-attr]
        return [f"{head}{ex.query}{delim}{c}" for c in ex.choices]
    if isinstance(ex, SchemaExample):
        head = "".join(
            f"{s.context_options[s.gold]}{delim}{s.continuation}{FEWSHOT_SEPARATOR}"  # type: ignore[union-attr]
            for s in shots
        )
        return [f"{head}{c}{delim}{ex.continuation}" for c in ex.context_options]
    head = "".join(f"{s.context.strip()}{delim}{s.continuation}{FEWSHOT_SEPARATOR}" for s in shots)  # type: ignore[union-attr]
    prompt = f"{head}{ex.context.strip()}{delim}"
    # The prompt without continuation is stripped so its trailing space joins the continuation's first
    # token, giving a clean token-level prefix of the full prompt.
    return [prompt.strip(), prompt + ex.continuation]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def _common_suffix(seqs: Sequence[Sequence[int]]) -> int:
    return _common_prefix([list(reversed(s)) for s in seqs])


@dataclass
class Row:
    """One sequence to run: tokens, and the half-open span [start, end) of tokens whose loss is scored."""

    example: int
    tokens: list[int]
    start: int
    end: int


def _truncate(tokens: list[int], start: int, end: int, max_len: int) -> tuple[list[int], int, int]:
    if len(tokens) > max_len:  # keep the end: the continuation is what gets scored
        crop = len(tokens) - max_len
        tokens, start, end = tokens[crop:], start - crop, end - crop
    return tokens, max(start, 1), end  # position 0 has no prediction


def example_rows(
    example_idx: int, ex: Example, prompts: list[str], tokenizer: EvalTokenizer, bos: int, max_len: int
) -> list[Row]:
    seqs = [[bos, *tokenizer.encode(p)] for p in prompts]
    shortest = min(len(s) for s in seqs)
    if isinstance(ex, MCExample):
        start = min(_common_prefix(seqs), shortest - 1)  # a choice that prefixes another still scores a token
        spans = [(start, len(s)) for s in seqs]
    elif isinstance(ex, SchemaExample):
        suffix = max(1, min(_common_suffix(seqs), shortest - 1))
        spans = [(len(s) - suffix, len(s)) for s in seqs]
    else:
        _, full = seqs
        start = min(_common_prefix(seqs), len(full) - 1)
        seqs, spans = [full], [(start, len(full))]
    rows = []
    for s, (a, b) in zip(seqs, spans):
        tokens, a, b = _truncate(s, a, b, max_len)
        rows.append(Row(example_idx, tokens, a, b))
    return rows


# ------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_rows(
    model: torch.nn.Module,
    rows: list[Row],
    *,
    num_steps: int | None,
    batch_size: int,
    pad_id: int,
    desc: str = "",
) -> tuple[list[float], list[bool]]:
    """Mean loss over each row's span and whether greedy decoding reproduces the span exactly."""
    device = model_device(model)
    mean_loss = [0.0] * len(rows)
    greedy = [False] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))  # similar lengths share a batch
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not desc):
        ids = pad_right([rows[i].tokens for i in batch], pad_id, device)
        logits = forward_logits(model, ids[:, :-1], num_steps)  # the last token is only ever a target
        targets = ids[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [B, T-1]
        hit = logits.argmax(-1) == targets
        pos = torch.arange(1, ids.shape[1], device=device)  # position of each target token
        starts = torch.tensor([rows[i].start for i in batch], device=device)[:, None]
        ends = torch.tensor([rows[i].end for i in batch], device=device)[:, None]
        span = (pos >= starts) & (pos < ends)
        losses = (nll * span).sum(1) / span.sum(1)
        exact = (hit | ~span).all(1)
        for j, i in enumerate(batch):
            mean_loss[i] = float(losses[j])
            greedy[i] = bool(exact[j])
    return mean_loss, greedy


def correct_flags(
    examples: list[Example], rows: list[Row], mean_loss: list[float], greedy: list[bool]
) -> list[bool]:
    by_example: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_example.setdefault(r.example, []).append(i)
    flags = []
    for e, ex in enumerate(examples):
        idxs = by_example[e]
        if isinstance(ex, LMExample):
            flags.append(greedy[idxs[0]])
        else:
            losses = [mean_loss[i] for i in idxs]
            flags.append(losses.index(min(losses)) == ex.gold)  # ties go to the first option
    return flags


def task_rows(
    spec: TaskSpec,
    pool: list[Example],
    n_eval: int,
    seed: int,
    tokenizer: EvalTokenizer,
    max_len: int,
) -> list[Row]:
    """Rows for the first n_eval examples of the shuffled pool; few-shot shots come from the whole pool,
    so a --max_per_task run scores exactly the prompts a full run would for those examples."""
    bos = bos_token(tokenizer)
    rows: list[Row] = []
    for idx in range(n_eval):
        shots = [pool[j] for j in fewshot_indices(len(pool), idx, spec.num_fewshot, seed)]
        prompts = render_prompts(pool[idx], spec.continuation_delimiter, shots)
        rows += example_rows(idx, pool[idx], prompts, tokenizer, bos, max_len)
    return rows


def shuffled(examples: list[Example]) -> list[Example]:
    pool = list(examples)
    random.Random(SHUFFLE_SEED).shuffle(pool)
    return pool


# ------------------------------------------------------------------------------------------- results


@dataclass
class TaskScore:
    label: str
    random_baseline: float
    num_examples: int
    accuracy: dict[int, float] = field(default_factory=dict)  # seed -> accuracy

    def centered(self, seed: int) -> float:
        b = self.random_baseline / 100.0
        return (self.accuracy[seed] - b) / (1.0 - b)


@dataclass
class SuiteScore:
    """Scores of one suite at one depth, over several seeds."""

    suite: Suite
    depth: str
    seeds: list[int]
    tasks: dict[str, TaskScore]
    missing: dict[str, str]

    def metric(self, seed: int, labels: frozenset[str] | None = None) -> float:
        vals = [t.centered(seed) for t in self.tasks.values() if labels is None or t.label in labels]
        return sum(vals) / len(vals) if vals else float("nan")

    def to_json(self) -> dict:
        tasks = {}
        for label, t in self.tasks.items():
            acc_m, acc_s = mean_std([t.accuracy[s] for s in self.seeds])
            cen_m, cen_s = mean_std([t.centered(s) for s in self.seeds])
            lo, hi = wilson_interval(acc_m, t.num_examples)
            tasks[label] = {
                "accuracy": acc_m,
                "accuracy_std": acc_s,
                "accuracy_ci95": [lo, hi],
                "centered": cen_m,
                "centered_std": cen_s,
                "random_baseline": t.random_baseline,
                "num_examples": t.num_examples,
                "per_seed_accuracy": {str(s): t.accuracy[s] for s in self.seeds},
            }
        core_m, core_s = mean_std([self.metric(s, CORE_LABELS) for s in self.seeds])
        out = {
            "depth": self.depth,
            "core_metric": core_m,
            "core_metric_std": core_s,
            "core_tasks_evaluated": sorted(label for label in self.tasks if label in CORE_LABELS),
        }
        if self.suite is Suite.CORE_EXTENDED:
            ext_m, ext_s = mean_std([self.metric(s) for s in self.seeds])
            out |= {"core_extended_metric": ext_m, "core_extended_metric_std": ext_s}
        out |= {"tasks": tasks, "missing": self.missing}
        return out


def evaluate_suite(
    model: torch.nn.Module,
    tokenizer: EvalTokenizer,
    bundle: EvalBundle,
    suite: Suite,
    *,
    depths: Sequence[int | None] = (None,),
    depth_names: Sequence[str] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    batch_size: int = 8,
    max_per_task: int | None = None,
    tasks: Sequence[str] | None = None,
    num_fewshot: int | None = None,
) -> list[SuiteScore]:
    """Evaluate the suite at every depth; returns one SuiteScore per depth (in order).

    `num_fewshot` replaces every task's few-shot count (e.g. 0 to compare with published zero-shot
    numbers); None keeps the suite's.

    Rows are built once per (task, seed) and reused at every depth. `torch.manual_seed(seed)` is set before
    each scoring pass so models with random initial states are deterministic for a given seed.
    """
    if batch_size < 1:
        raise EvalError(f"--batch_size must be >= 1, got {batch_size}")
    if max_per_task is not None and max_per_task < 1:
        raise EvalError(f"--max_per_task must be >= 1, got {max_per_task}")
    if not seeds:
        raise EvalError("at least one seed is needed")
    specs = suite_tasks(suite)
    if tasks:
        unknown = sorted(set(tasks) - {s.label for s in specs})
        if unknown:
            raise EvalError(f"unknown task(s) for suite {suite.value}: {unknown}")
        specs = tuple(s for s in specs if s.label in set(tasks))
    resolved = bundle.resolve(specs)
    if num_fewshot is not None:
        resolved.available = [replace(s, num_fewshot=num_fewshot) for s in resolved.available]
    names = list(depth_names) if depth_names is not None else [str(d) for d in depths]
    scores = [
        SuiteScore(suite, names[i], list(seeds), {}, dict(resolved.missing)) for i in range(len(depths))
    ]
    max_len = int(model.config.block_size)
    pad_id = pad_token(tokenizer)
    was_training = model.training
    model.eval()
    try:
        for spec in tqdm(resolved.available, desc=f"{suite.value} tasks", unit="task"):
            examples = bundle.load(spec)
            pool = shuffled(examples)
            n_eval = min(len(pool), max_per_task) if max_per_task else len(pool)
            for score in scores:
                score.tasks[spec.label] = TaskScore(spec.label, spec.random_baseline, n_eval)
            for seed in seeds:
                rows = task_rows(spec, pool, n_eval, seed, tokenizer, max_len)
                for d, depth in enumerate(depths):
                    torch.manual_seed(seed)
                    loss, greedy = score_rows(
                        model,
                        rows,
                        num_steps=depth,
                        batch_size=batch_size,
                        pad_id=pad_id,
                        desc=f"{spec.label} seed={seed} depth={names[d]}",
                    )
                    flags = correct_flags(pool[:n_eval], rows, loss, greedy)
                    scores[d].tasks[spec.label].accuracy[seed] = sum(flags) / n_eval
    finally:
        model.train(was_training)
    return scores
