"""Portable models: torch.export and ONNX (weight-only quantisation is `infer/quantize.py`).

- `export_program` / `export_onnx`: the fixed-depth, cache-free forward ids [B, T] → logits [B, T, V]
  as a `torch.export` program (.pt2, loadable without our code) or an ONNX graph (the `onnx`,
  `onnxscript` packages; run it with onnxruntime). Tracing takes RoPE's real-arithmetic form
  (`layers.rope_real`), which ONNX can express. The batch size is dynamic; the sequence length is
  fixed at export time, because the model's attention chooses `is_causal` from the length in Python,
  which torch.export cannot keep symbolic.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from parcae_lm.errors import ConfigError
from parcae_lm.model import LanguageModel


class LogitsModule(nn.Module):
    """ids → logits at a fixed depth: the function the exporters trace."""

    def __init__(self, model: LanguageModel, num_steps: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.kwargs = {} if num_steps is None or not model.config.is_parcae else {"num_steps": num_steps}

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids, **self.kwargs)["logits"]


def _example(model: LanguageModel, batch: int = 2, seq_len: int = 16) -> Tensor:
    return torch.randint(0, model.config.vocab_size, (batch, seq_len), device=model.device)


def export_program(model: LanguageModel, seq_len: int, num_steps: int | None = None):
    """torch.export of the fixed-depth forward for [batch, seq_len] inputs (batch dynamic)."""
    from torch.export import Dim, export

    if model.training:
        raise ConfigError("export an eval-mode model (model.eval()): training samples depths at random")
    if not 1 <= seq_len <= model.config.block_size:
        raise ConfigError(f"seq_len must be in [1, block_size={model.config.block_size}], got {seq_len}")
    batch = Dim("batch", min=1, max=1024)
    module = LogitsModule(model, num_steps)
    with torch.no_grad():
        # One eager call first: the model fills its lazy tables (RoPE, the seeded initial-state table)
        # with generator-driven code that torch.export cannot trace; traced, they are plain constants.
        module(_example(model, 1, 2))
        return export(module, (_example(model, 2, seq_len),), dynamic_shapes=({0: batch},))


def save_program(program, path: str | os.PathLike) -> Path:
    import io

    from parcae_lm.files import atomic_write_bytes

    buf = io.BytesIO()
    torch.export.save(program, buf)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_program(path: str | os.PathLike):
    return torch.export.load(str(path))


def export_onnx(
    model: LanguageModel, path: str | os.PathLike, seq_len: int, num_steps: int | None = None
) -> Path:
    """ONNX graph of the fixed-depth forward (needs the optional `onnx` and `onnxscript` packages)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing)"
        ) from None
    if model.device.type != "cpu" or model.transformer.wte.weight.dtype != torch.float32:
        raise ConfigError("ONNX export expects an fp32 CPU model (call .cpu().float() first)")
    program = export_program(model, seq_len, num_steps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
        onnx_program.save(str(tmp))
    os.replace(tmp, path)
    return path
