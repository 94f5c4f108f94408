"""Fakes shared by the eval tests: a byte-level tokenizer and models whose logits the tests control."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0..255) plus BOS/EOS/PAD specials (0 bytes each)."""

    bos_id, eos_id, pad_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> torch.Tensor:
        out = torch.ones(self.vocab_size, dtype=torch.long)
        out[256:] = 0
        return out


class PairTokenizer(ByteTokenizer):
    """Byte tokenizer with one extra token for the 2-byte pair 'é' (to test multi-byte byte counts)."""

    E_ACUTE = 259
    vocab_size = 260

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids: list[int] = []
        for ch in text:
            ids += [self.E_ACUTE] if ch == "é" else list(ch.encode("utf-8"))
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> str:
        out = b"".join("é".encode() if i == self.E_ACUTE else bytes([i]) for i in ids if i < 256 or i == 259)
        return out.decode("utf-8", errors="replace")

    def token_bytes(self) -> torch.Tensor:
        out = super().token_bytes()  # sized by this class's vocab_size
        out[self.E_ACUTE] = 2
        return out


@dataclass
class FakeConfig:
    block_size: int = 512
    mean_recurrence: int | None = None
    vocab_size: int = 259


class BigramModel(torch.nn.Module):
    """logits[t] = table[input[t]]: next-token preferences the test writes down.

    `teach(text)` raises the logit of every consecutive byte pair in `text`, so continuations that
    follow taught text have low loss and are produced greedily. With a looped config, `num_steps`
    scales the logits (so depth visibly changes losses but not argmaxes) and is recorded.
    """

    def __init__(self, vocab_size: int = 259, block_size: int = 512, mean_recurrence: int | None = None):
        super().__init__()
        self.config = FakeConfig(block_size, mean_recurrence, vocab_size)
        self.table = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size))
        self.calls: list[dict] = []

    def teach(self, text: str, strength: float = 8.0) -> BigramModel:
        ids = list(text.encode("utf-8"))
        with torch.no_grad():
            for a, b in zip(ids, ids[1:]):
                self.table[a, b] += strength
        return self

    def forward(self, input_ids, labels=None, return_logits=True, num_steps=None, doc_ids=None):
        if self.config.mean_recurrence is None:
            assert num_steps is None, "GPT-style models must not receive num_steps"
        self.calls.append({"shape": tuple(input_ids.shape), "num_steps": num_steps})
        if input_ids.shape[1] > self.config.block_size:
            raise AssertionError(f"sequence longer than block_size: {input_ids.shape}")
        logits = self.table[input_ids]
        if num_steps is not None:
            logits = logits * (1.0 + 0.1 * num_steps)
        out = {"logits": logits.float()}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=-100
            )
        return out


class RandomLM(torch.nn.Module):
    """A small causal model with real cross-position mixing (cumulative mean of embeddings), so padding,
    batching or truncation mistakes change its outputs."""

    def __init__(self, vocab_size: int = 259, block_size: int = 64, dim: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.config = FakeConfig(block_size, None, vocab_size)
        self.emb = torch.nn.Parameter(torch.randn(vocab_size, dim, generator=g))
        self.out = torch.nn.Parameter(torch.randn(dim, vocab_size, generator=g) * 2)

    def forward(self, input_ids, labels=None, return_logits=True, num_steps=None, doc_ids=None):
        x = self.emb[input_ids]
        x = x.cumsum(1) / torch.arange(1, x.shape[1] + 1)[None, :, None]
        return {"logits": (torch.tanh(x) @ self.out).float()}


def write_bundle(root: Path, tasks: dict[str, tuple[str, str, int, str, float, list[dict]]]) -> Path:
    """A DCLM-layout bundle: {label: (dataset_uri, icl_task_type, shots, delimiter, baseline, records)}."""
    lines = ["icl_tasks:"]
    meta = ["Eval Task,Random baseline,Category"]
    for label, (uri, kind, shots, delim, baseline, records) in tasks.items():
        lines += [
            f"- label: {label}",
            f"  dataset_uri: {uri}",
            f"  num_fewshot: [{shots}]",
            f"  icl_task_type: {kind}",
            f"  continuation_delimiter: {json.dumps(delim)}",
        ]
        meta.append(f"{label},{baseline},test")
        path = root / "eval_data" / uri
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "core.yaml").write_text("\n".join(lines) + "\n")
    (root / "eval_meta_data.csv").write_text("\n".join(meta) + "\n")
    return root


def test_byte_tokenizer_round_trip():
    tok = PairTokenizer()
    text = "café ñ 日本"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
