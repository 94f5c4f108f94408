"""Any causal LM on the same harness: a transformers model (directory, hub id or GGUF file) as an eval model.

Needs the `hf` extra (`pip install 'parcae-lm[hf]'`: transformers, and gguf for GGUF files, which
transformers dequantises to float32 on load). The model comes with its own tokenizer, so:

- bits per byte stays a property of the text: `HFTokenizer.token_bytes()` gives each token's exact
  UTF-8 length (byte-level BPE as in GPT-2, or SentencePiece pieces with "▁" for a space and
  `<0xNN>` byte fallback), and `check_byte_accounting` verifies it adds up to each document's bytes;
- CORE runs unchanged: prompts start with the model's BOS token and are scored by the same code.

`HFCausalLM` has what the harness asks of a model: `config.block_size` (the context the harness uses,
at most the model's own), `config.vocab_size` (the width of its logits) and
`model(ids, return_logits=True)["logits"]`. Documents are not masked to themselves (token shards of
`parcae data` are in a parcae tokenizer's ids anyway, so an HF model reads text, not shards).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
import torch

from parcae_lm.download import hub_snapshot
from parcae_lm.errors import CheckpointError, EvalError

DEFAULT_BLOCK_SIZE = 2048  # harness context for models whose own is longer (prompts here are short)
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SPACE_PIECE = "\u2581"  # "▁", SentencePiece's space


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise EvalError(
            "evaluating a transformers model needs the hf extra: pip install 'parcae-lm[hf]'"
        ) from e
    return transformers


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte, inverted."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _is_byte_level(hf_tokenizer: Any) -> bool:
    """GPT-2-style byte-level BPE: its decoder (or pre-tokenizer) maps characters back to bytes."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    return isinstance(backend.decoder, tokenizers.decoders.ByteLevel) or isinstance(
        backend.pre_tokenizer, tokenizers.pre_tokenizers.ByteLevel
    )


@dataclass
class HFConfig:
    block_size: int
    vocab_size: int
    mean_recurrence: None = None  # not a looped model: no test-time depth


class HFTokenizer:
    """A transformers tokenizer behind the harness's tokenizer protocol (no special tokens added by encode)."""

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        self.bos_id: int | None = hf_tokenizer.bos_token_id
        self.eos_id: int | None = hf_tokenizer.eos_token_id
        self.pad_id: int | None = hf_tokenizer.pad_token_id
        self.vocab_size = len(hf_tokenizer)
        self._token_bytes: torch.Tensor | None = None

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = list(self.hf.encode(text, add_special_tokens=False))
        return (
            ([self.bos_id] if bos and self.bos_id is not None else [])
            + ids
            + ([self.eos_id] if eos and self.eos_id is not None else [])
        )

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def token_bytes(self) -> torch.Tensor:
        """UTF-8 bytes each token id stands for (0 for special tokens)."""
        if self._token_bytes is None:
            pieces = self.hf.convert_ids_to_tokens(list(range(self.vocab_size)))
            special = set(self.hf.all_special_ids)
            if _is_byte_level(self.hf):
                table = _byte_decoder()
                counts = [sum(1 for ch in p if ch in table) if p else 0 for p in pieces]
            else:
                counts = [
                    1 if _BYTE_PIECE.fullmatch(p) else len(p.replace(_SPACE_PIECE, " ").encode("utf-8"))
                    for p in (p or "" for p in pieces)
                ]
            self._token_bytes = torch.tensor(
                [0 if i in special else c for i, c in enumerate(counts)], dtype=torch.long
            )
        return self._token_bytes


class HFCausalLM(torch.nn.Module):
    """A transformers causal LM as an eval model (logits over the model's vocabulary)."""

    def __init__(self, model: torch.nn.Module, block_size: int | None = None):
        super().__init__()
        self.model = model
        own = getattr(model.config, "max_position_embeddings", None) or DEFAULT_BLOCK_SIZE
        self.config = HFConfig(
            block_size=int(block_size or min(own, DEFAULT_BLOCK_SIZE)),
            vocab_size=int(model.config.vocab_size),
        )
        if self.config.block_size > own:
            raise EvalError(
                f"block size {self.config.block_size} exceeds the model's context of {own} tokens"
            )
        self.train(model.training)  # the wrapper's mode is the model's (eval: no dropout)

    def forward(
        self, input_ids: torch.Tensor, return_logits: bool = True, doc_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if doc_ids is not None:
            raise EvalError("a transformers model cannot mask documents to themselves: evaluate it on text")
        return {"logits": self.model(input_ids=input_ids, use_cache=False).logits}


def is_hf_model(spec: str | Path) -> bool:
    """Whether `spec` names a transformers model rather than a parcae-lm one: a .gguf file, or a
    directory / hub repo whose config.json has a `model_type` other than parcae-lm's own export."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return True
    if path.is_dir():
        config = path / "config.json"
    elif path.exists() or str(spec).count("/") != 1 or str(spec).startswith((".", "/", "~")):
        return False  # a file, or a local path that does not exist: the parcae loader reports it
    else:
        config = hub_snapshot(str(spec), allow_patterns=["config.json"]) / "config.json"
    if not config.is_file():
        return False
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise CheckpointError(f"{config} is not a JSON object") from None
    return model_type is not None and model_type != "parcae"


def load_hf_model(
    spec: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    block_size: int | None = None,
) -> tuple[HFCausalLM, HFTokenizer]:
    """The model and its tokenizer from a directory, a hub id or a GGUF file (dequantised on load)."""
    transformers = _transformers()
    path = Path(spec).expanduser()
    kwargs: dict[str, Any] = {}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CheckpointError(f"GGUF file not found: {path}")
        source: str = str(path.parent)
        kwargs["gguf_file"] = path.name
    else:
        source = str(path) if path.exists() else str(spec)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise CheckpointError(f"transformers could not load {spec}: {' '.join(str(e).split())}") from e
    model.eval().to(device)
    return HFCausalLM(model, block_size=block_size), HFTokenizer(tok)
