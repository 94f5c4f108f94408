"""What weight-only quantisation buys: weight bytes, peak RSS, decode tok/s and bits per byte against fp32.

`bench_variant` measures one variant in the current process (peak RSS is per process: `parcae infer
quantize` runs each variant in a process of its own so the memory figures compare).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from parcae_lm.eval.bpb import evaluate_bpb
from parcae_lm.infer.quantize import quantize, weight_bytes
from parcae_lm.model import Decoder, LanguageModel
from parcae_lm.model.decode import compile_supported
from parcae_lm.runtime import peak_memory_bytes, sync_device

VARIANTS = {"fp32": None, "int8": 8, "int4": 4}


@dataclass
class QuantBenchResult:
    variant: str
    weight_bytes: int
    bits_per_byte: float
    decode_tokens_per_second: float  # eager one-token steps at batch 1
    compiled_decode_tokens_per_second: float | None  # the compiled step (None: not measured)
    peak_rss_mb: float  # the whole process: load, quantise, evaluate, decode

    def to_dict(self) -> dict:
        return asdict(self)


def _decode_tps(model: LanguageModel, new_tokens: int, compiled: bool) -> float:
    dec = Decoder(model, 1, 16 + new_tokens, compiled=compiled)
    if compiled:
        dec.precompile()
    prompt = torch.zeros(1, 16, dtype=torch.long, device=model.device)
    for _ in range(2):  # the first pass warms up
        dec.reset()
        logits = dec.prefill(prompt)
        sync_device(model.device)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            logits = dec.step(logits[:, : model.config.vocab_size].argmax(-1))
        sync_device(model.device)
        seconds = time.perf_counter() - t0
    return new_tokens / seconds


@torch.no_grad()
def bench_variant(
    model: LanguageModel,
    variant: str,
    batches: Iterable,
    token_bytes: torch.Tensor,
    new_tokens: int = 64,
    compiled: bool | None = None,
) -> QuantBenchResult:
    """Quantise `model` as `variant` (fp32: as it is), score `batches` and time decoding. `compiled`
    (default: where supported) also times the compiled decode step."""
    bits = VARIANTS[variant]
    m = model if bits is None else quantize(model, bits)
    bpb = evaluate_bpb(m, batches, token_bytes)[0].bits_per_byte
    eager = _decode_tps(m, new_tokens, compiled=False)
    compiled = compile_supported(m.device) if compiled is None else compiled
    fast = _decode_tps(m, new_tokens, compiled=True) if compiled else None
    return QuantBenchResult(variant, weight_bytes(m), bpb, eager, fast, peak_memory_bytes(m.device) / 2**20)
