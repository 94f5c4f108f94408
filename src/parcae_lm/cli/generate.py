"""`parcae generate MODEL [PROMPT]`: sample text from a trained model, streamed to stdout."""

from __future__ import annotations

import sys

import torch

from parcae_lm.checkpoint import load_run
from parcae_lm.errors import ConfigError
from parcae_lm.runtime import resolve_device


def generate(
    model: str,
    prompt: str = "",
    /,
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    recurrence: int | None = None,
    num_samples: int = 1,
    seed: int = 0,
    tokenizer: str | None = None,
    device: str = "auto",
    compile: bool | None = None,
    allow_unverified: bool = False,
) -> None:
    """Sample text from a trained model (streams to stdout).

    Args:
        model: A run directory, a save_pretrained directory or a hub id.
        prompt: Prompt text (default: start from BOS).
        max_new_tokens: Tokens to generate after the prompt.
        temperature: Sampling temperature; 0 is greedy.
        top_k: Sample among the k most likely tokens only.
        top_p: Sample among the most likely tokens whose probabilities add up to p.
        recurrence: Test-time recurrence of a looped model (default: its mean_recurrence).
        num_samples: Independent samples, generated as one batch (printed at the end).
        seed: Seed of the sampling.
        tokenizer: Tokenizer directory (default: MODEL/tokenizer).
        device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
        compile: Decode through the model's compiled step (true) or eagerly (false); default: as
            model.generate decides (a one-off run decodes eagerly: compiling would cost more than it saves).
        allow_unverified: Load weights that fail verification (recorded sha256, NaN/inf values) anyway.
    """
    if num_samples < 1:
        raise ConfigError(f"--num_samples must be >= 1, got {num_samples}")
    dev = resolve_device(device)
    run = load_run(model, device=dev, tokenizer=tokenizer, allow_unverified=allow_unverified)
    lm, tok = run.model, run.tokenizer
    ids = [tok.bos_id, *tok.encode(prompt)]
    if len(ids) + max_new_tokens > lm.config.block_size:
        raise ConfigError(
            f"prompt ({len(ids)} tokens with BOS) + --max_new_tokens {max_new_tokens} exceeds the model's "
            f"context of {lm.config.block_size} tokens"
        )
    batch = torch.tensor([ids] * num_samples, device=dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    stream = num_samples == 1
    emitted: list[int] = []
    printed = ""

    def on_token(token: torch.Tensor) -> None:
        nonlocal printed
        emitted.append(int(token[0]))
        text = tok.decode(emitted)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed) :])
            sys.stdout.flush()
            printed = text

    if stream:
        sys.stdout.write(prompt)
    out = lm.generate(
        batch,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_steps=recurrence,
        generator=g,
        eos_id=tok.eos_id,
        on_token=on_token if stream else None,
        compiled=compile,
    )
    if stream:
        sys.stdout.write("\n")
    else:
        for i, row in enumerate(out.tolist()):
            print(f"--- sample {i + 1} ---\n{prompt}{tok.decode(row[len(ids) :])}")
