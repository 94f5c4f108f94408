"""Weight-only quantisation through torchao (the `quant` extra): int8 on CPU and CUDA, int4 on CUDA.

    from parcae_lm.infer.quantize import quantize, weight_bytes
    small = quantize(model, bits=8)          # a copy; the original is untouched
    small.generate(ids, 64)                  # decoding, evaluation, serving: the model's own forward

Every Linear's weight (attention, MLP, the readout C, the head) becomes a torchao quantised tensor with one
scale per output row (int8) or per `group_size` inputs (int4); activations stay in the model's dtype.
With tied embeddings the token table *is* the head's matrix: it stays one int8 table, which the head
multiplies and the embedding looks rows up in (`QuantizedEmbedding`), so the model is about a quarter of
its fp32 size (plus the norms, the injection and the value-embedding tables, which stay as they are).

A looped model reuses its core weights at every iteration: quantising the core shrinks memory once but
its rounding error is applied T times per token, and a decode step reads the core T times — so on
hardware where a quantised matmul is slower than a float one the cost is paid T times too. See
docs/inference.md for what this measures to on the default model.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from parcae_lm.errors import ConfigError
from parcae_lm.model import LanguageModel

try:
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("quantisation needs the `quant` extra: pip install 'parcae-lm[quant]'") from e

BITS = (8, 4)


class QuantizedEmbedding(nn.Module):
    """Row lookups in an int8 table with one scale per row (the tied head's quantised matrix)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight  # the head's torchao tensor, shared: one copy of the table in memory

    def forward(self, ids: Tensor) -> Tensor:
        w = self.weight
        return w.qdata[ids].to(w.dtype) * w.scale.reshape(-1, 1)[ids].to(w.dtype)


def quantize(model: LanguageModel, bits: int = 8, group_size: int = 128) -> LanguageModel:
    """A copy of `model` with weight-only int8 (`bits=8`, CPU or CUDA) or int4 (`bits=4`, CUDA with
    bf16 weights, groups of `group_size` inputs) Linears. The model must be materialised (not meta)."""
    if bits not in BITS:
        raise ConfigError(f"bits must be one of {BITS}, got {bits}")
    device = model.device
    if device.type == "meta":
        raise ConfigError("quantize a loaded model, not one on the meta device")
    if bits == 4 and device.type != "cuda":
        raise ConfigError(
            f"int4 weight-only matmuls need CUDA (torchao has no {device.type} kernel for them); use bits=8"
        )
    if bits == 4 and model.transformer.wte.weight.dtype != torch.bfloat16:
        raise ConfigError("int4 weight-only quantisation runs on bf16 models: call model.to(torch.bfloat16)")
    q = copy.deepcopy(model).eval()
    tied = q.lm_head.weight is q.transformer.wte.weight
    if tied:  # the head gets its own module so the embedding can follow it into int8
        q.lm_head.weight = nn.Parameter(q.lm_head.weight.detach().clone())
    if bits == 8:
        config = Int8WeightOnlyConfig()
    else:
        config = Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")
    quantize_(q, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    if tied and bits == 8:
        q.transformer.wte = QuantizedEmbedding(q.lm_head.weight)
    q.tie_weights = lambda: None  # type: ignore[method-assign]  (the sharing above is the tying now)
    return q


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as stored (quantised data and scales; shared tensors,
    such as a tied head, counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        for part in _storage_parts(t):
            if id(part) not in seen:
                seen.add(id(part))
                total += part.numel() * part.element_size()
    return total


def _storage_parts(t: Tensor) -> list[Tensor]:
    """The plain tensors a (possibly torchao subclass) tensor is stored as."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return [p for name in names for p in _storage_parts(getattr(t, name))]
    return [t]
