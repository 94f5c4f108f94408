"""Autoregressive sampling with a preallocated KV cache: greedy, temperature, top-k, top-p, batches."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from parcae_lm.infer.kv_cache import KVCache
from parcae_lm.model import LanguageModel


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row from [B, V] logits. temperature 0 means greedy (argmax)."""
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
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
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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
) -> Tensor:
    """Continue each row of `input_ids` [B, T] by up to `max_new_tokens` tokens; returns [B, T + new].

    Prompts plus new tokens must fit in the model's context (block_size): longer requests raise
    ValueError rather than silently truncating. Rows that emit `eos_id` keep emitting it. `on_token`
    receives each new column [B] as it is produced (for streaming output). `compiled=True` decodes
    through the inference engine's one static-shape compiled step (`infer.engine.StaticDecode`: ~3×
    faster per token on CPU, compiles in ~5–35 s first; full cache and plain weights only).
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    B, T = input_ids.shape
    if T == 0:
        raise ValueError("generate needs a non-empty prompt (e.g. the BOS token)")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be ≥ 0, got {max_new_tokens}")
    limit = model.config.block_size
    if T + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of {limit} tokens; "
            "shorten the prompt or ask for fewer tokens"
        )
    was_training = model.training
    model.eval()
    try:
        vocab = model.config.vocab_size  # never sample the padding rows of the embedding table
        prefill, step = _decoder(model, B, T + max_new_tokens, num_steps, compiled)
        out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=input_ids.device)
        out[:, :T] = input_ids
        if max_new_tokens == 0:
            return out
        logits = prefill(input_ids)[:, :vocab]
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_id), token)
                finished |= token == eos_id
            out[:, T + i] = token
            if on_token is not None:
                on_token(token)
            if i + 1 == max_new_tokens or (eos_id is not None and bool(finished.all())):
                return out[:, : T + i + 1]
            logits = step(token)[:, :vocab]
        return out
    finally:
        model.train(was_training)


def _decoder(
    model: LanguageModel, batch_size: int, max_len: int, num_steps: int | None, compiled: bool
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """(prefill(ids [B, T]), step(token [B])), each returning the last position's logits [B, V]."""
    if compiled:
        from parcae_lm.infer.engine import Engine  # the engine builds on this module's cache

        eng = Engine(model, batch_size, max_len, num_steps, compiled=True)
        return eng.prefill, eng.step
    cache = KVCache(model, batch_size, max_len, **({} if num_steps is None else {"num_steps": num_steps}))
    return (
        lambda ids: model(ids, kv_cache=cache)["logits"][:, -1],
        lambda token: model(token[:, None], kv_cache=cache)["logits"][:, -1],
    )
