"""Loading and saving models: ours (config.json + model.safetensors) and the authors' formats, and
`load_run`, the one loader of "model + tokenizer + metadata" from a run directory, export or hub id.

Accepted on load: a local directory or a hub id; `config.json` with or without `_class_name`; weights in
`model.safetensors`, `pytorch_model.bin`, `model.pt` or `model.bin`, optionally nested as {"model": ...};
`module.` / `_orig_mod.` / `_forward_module.` / `model.` path components anywhere in keys; `freqs_cis`
present (checked against our RoPE table) or not; a tied head under `lm_head.weight`, `transformer.wte.weight`
or both. Loading is strict: missing or unexpected keys and shape mismatches raise CheckpointError naming
them. Pickles are opened with `weights_only=True` only.

Verified: `save_pretrained` records the sha256 of the weight file in `checksums.json`; loading recomputes it
(about a second per GB) and refuses a file that no longer matches, and refuses weights holding NaN or inf,
naming the file and the tensor. `allow_unverified=True` loads such a model anyway (with a warning).
Directories without `checksums.json` (the authors' checkpoints, older exports) get the finiteness check only.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from parcae_lm.config import ModelConfig, from_dict
from parcae_lm.download import hub_snapshot
from parcae_lm.errors import CheckpointError, ConfigError, TokenizerError
from parcae_lm.files import ensure_dir, sha256_file, write_failure
from parcae_lm.model import LanguageModel, build_model
from parcae_lm.model.layers import rope_table
from parcae_lm.tokenizer import TOKENIZER_FILE, Tokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.bin")
CHECKSUMS = "checksums.json"  # {"sha256": {weight file name: hex digest}}, written by save_pretrained
TOKENIZER_DIR = "tokenizer"  # where a run directory (and save_pretrained with a tokenizer) keeps it
# What a hub download fetches: the config, the weights and the tokenizer (in its folder or at the root).
HUB_PATTERNS = ["*.json", *WEIGHT_FILES, f"{TOKENIZER_DIR}/*"]
_WRAPPER_COMPONENTS = {"module", "_orig_mod", "_forward_module", "model"}


def save_pretrained(model: LanguageModel, directory: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` + `checksums.json` (each complete before it is renamed into
    place; a crash between renames leaves a pair that fails verification rather than a silent mix)."""
    directory = ensure_dir(Path(directory), "model directory")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")  # the same tensor as transformer.wte.weight
    weights = "model.safetensors"
    try:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".save-") as tmp:
            save_file(state, os.path.join(tmp, weights), metadata={"format": "pt"})
            digest = sha256_file(Path(tmp, weights))
            Path(tmp, "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
            Path(tmp, CHECKSUMS).write_text(json.dumps({"sha256": {weights: digest}}, indent=2) + "\n")
            for name in (weights, "config.json", CHECKSUMS):
                os.replace(os.path.join(tmp, name), directory / name)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error type
        needed = sum(v.numel() * v.element_size() for v in state.values())
        raise write_failure(e, directory / weights, "the model", needed) from e
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no config.json in {directory}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if raw.get("model_type") == "parcae" and isinstance(raw.get("parcae"), dict):
        raw = raw["parcae"]  # a transformers export (infer/hf.py) keeps our config under "parcae"
    try:
        return from_dict(raw)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def from_pretrained(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    allow_unverified: bool = False,
) -> LanguageModel:
    """Load a model from a local directory (ours or the reference's layout) or a Hugging Face hub id.

    The weights are verified (see the module docstring): a file that does not match its recorded sha256,
    or weights holding NaN/inf, raise CheckpointError unless `allow_unverified`."""
    directory = resolve_directory(name_or_path)
    config = load_config(directory)
    path = weight_file(directory)
    _verify(path, _recorded_sha256(directory, path), allow_unverified)
    state = load_state_dict_file(directory)
    _verify_finite(path, state, allow_unverified)
    with torch.device("meta"):
        model = build_model(config)
    state = normalize_state_dict(state, model)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.eval()
    return model.to(device=device or "cpu", dtype=dtype)


def _recorded_sha256(directory: Path, weights: Path) -> str | None:
    """The digest checksums.json records for `weights`, or None when the directory records none."""
    path = directory / CHECKSUMS
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())["sha256"]
        if not isinstance(recorded, dict):
            raise TypeError("'sha256' is not a mapping")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f'{path} is not a valid checksum record ({e}); expected {{"sha256": {{...}}}}'
        ) from None
    return recorded.get(weights.name)


def _verify(path: Path, expected: str | None, allow_unverified: bool) -> None:
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected:
        _refuse(
            f"{path} does not match the sha256 recorded in {CHECKSUMS} when it was saved (expected "
            f"{expected[:16]}…, got {got[:16]}…): the file is corrupted or was changed",
            allow_unverified,
        )


def _verify_finite(path: Path, state: dict[str, Tensor], allow_unverified: bool) -> None:
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        listed = _short([f"{k} ({n:,})" for k, n in bad.items()], 4)
        _refuse(f"{path} holds {sum(bad.values()):,} NaN/inf weight value(s), in {listed}", allow_unverified)


def _refuse(problem: str, allow_unverified: bool) -> None:
    if allow_unverified:
        warnings.warn(f"{problem}; loading it anyway (allow_unverified=True)", stacklevel=3)
        return
    raise CheckpointError(
        f"{problem}; refusing to load it (allow_unverified=True, or --allow_unverified on the command line, "
        "loads it anyway)"
    )


def resolve_directory(name_or_path: str | Path) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; expected a directory with config.json and weights")
    text = str(name_or_path)
    # A hub id is exactly 'org/name'; anything else, or an 'org' that is a local folder, is a local path.
    if text.count("/") != 1 or text.startswith((".", "/", "~")) or Path(text.split("/")[0]).is_dir():
        raise CheckpointError(
            f"model directory {path} does not exist: neither a local directory nor a hub id 'org/name'"
        )
    return hub_snapshot(text, allow_patterns=HUB_PATTERNS)


@dataclass
class Run:
    """A model ready to use with its tokenizer and whatever its directory says about how it was made."""

    model: LanguageModel
    tokenizer: Tokenizer
    directory: Path
    meta: dict[str, Any] = field(default_factory=dict)  # "run_config" (config.yaml), "summary" (summary.json)


def load_run(
    name_or_path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tokenizer: str | Path | None = None,
    allow_unverified: bool = False,
) -> Run:
    """Model + tokenizer + metadata from a run directory, a `save_pretrained`/exported directory or a hub id.

    The tokenizer is `tokenizer` if given, else the directory's `tokenizer/` folder (run directories) or
    its top-level tokenizer.json (exports and hub repos). The model is in eval mode and verified as
    `from_pretrained` verifies it (`allow_unverified` as there)."""
    directory = resolve_directory(name_or_path)
    tok = load_tokenizer(directory, tokenizer)  # first: it is quick, and a missing one fails fast
    model = from_pretrained(directory, device=device, dtype=dtype, allow_unverified=allow_unverified)
    return Run(model, tok, directory, _run_meta(directory))


def load_tokenizer(directory: Path, explicit: str | Path | None = None) -> Tokenizer:
    candidates = [Path(explicit)] if explicit is not None else [directory / TOKENIZER_DIR, directory]
    for path in candidates:
        if (path / TOKENIZER_FILE).is_file():
            return Tokenizer.load(path)
    looked = " or ".join(str(p / TOKENIZER_FILE) for p in candidates)
    raise TokenizerError(
        f"no tokenizer for {directory}: looked for {looked}; pass --tokenizer DIR (tokenizer=DIR in Python)"
    )


def _run_meta(directory: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    try:
        if (directory / "config.yaml").is_file():
            meta["run_config"] = yaml.safe_load((directory / "config.yaml").read_text())
        if (directory / "summary.json").is_file():
            meta["summary"] = json.loads((directory / "summary.json").read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise CheckpointError(f"unreadable run metadata in {directory}: {e}") from None
    return meta


def weight_file(directory: Path) -> Path:
    """The directory's weight file (the first of WEIGHT_FILES present)."""
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            return path
    raise CheckpointError(f"no weights in {directory}: looked for {', '.join(WEIGHT_FILES)}")


def load_state_dict_file(directory: Path) -> dict[str, Tensor]:
    path = weight_file(directory)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} could not be loaded with weights_only=True (arbitrary pickled objects are refused): {e}"
        ) from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # a training checkpoint {"model": ..., "optimizer": ..., ...}
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return obj


def normalize_state_dict(state: dict[str, Tensor], model: LanguageModel) -> dict[str, Tensor]:
    """Map a checkpoint's keys onto `model`'s and check every key and shape (strict)."""
    cfg = model.config
    clean: dict[str, Tensor] = {}
    for key, value in state.items():
        new = ".".join(p for p in key.split(".") if p not in _WRAPPER_COMPONENTS)
        if new in clean:
            raise CheckpointError(f"checkpoint keys {key!r} and another key both map to {new!r}")
        clean[new] = value

    freqs = clean.pop("freqs_cis", None)
    if freqs is not None:
        _check_rope(freqs, cfg)

    expected = model.state_dict()
    if cfg.tie_embeddings:
        head, wte = clean.pop("lm_head.weight", None), clean.get("transformer.wte.weight")
        if wte is None and head is not None:
            wte = clean["transformer.wte.weight"] = head
        if head is not None and wte is not None and head.shape == wte.shape and not torch.equal(head, wte):
            raise CheckpointError(
                "config says tie_embeddings but lm_head.weight differs from transformer.wte.weight"
            )
        if wte is not None:
            clean["lm_head.weight"] = wte
    else:
        head = clean.get("lm_head.weight")
        want = expected["lm_head.weight"].shape
        if head is not None and head.shape != want and head.T.shape == want:
            clean["lm_head.weight"] = head.T.contiguous()  # the reference's fused head stores [d, V]

    missing = sorted(set(expected) - set(clean))
    unexpected = sorted(set(clean) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(clean[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in clean and clean[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_short(mismatched)}")
        raise CheckpointError(
            f"checkpoint does not match the {type(model).__name__} config: " + "; ".join(parts)
        )
    dtype = next(iter(expected.values())).dtype
    return {k: v if v.is_floating_point() and v.dtype == dtype else v.to(dtype) for k, v in clean.items()}


def _check_rope(freqs: Tensor, cfg: ModelConfig) -> None:
    """The reference stores its RoPE table [1, L, 1, D/2, 2]; make sure it matches the config's rope_base."""
    if freqs.dim() != 5 or freqs.shape[-1] != 2:
        raise CheckpointError(f"freqs_cis has shape {tuple(freqs.shape)}, expected [1, L, 1, D/2, 2]")
    n = min(freqs.shape[1], cfg.block_size)
    ours = torch.view_as_real(rope_table(n, 2 * freqs.shape[3], cfg.rope_base, cfg.rope_condense_ratio))
    theirs = freqs[0, :n, 0].float()
    if not torch.allclose(ours, theirs, atol=1e-3):
        raise CheckpointError(
            "the checkpoint's freqs_cis does not match rope_base="
            f"{cfg.rope_base}, rope_condense_ratio={cfg.rope_condense_ratio} from its config"
        )


def _short(items: list[str], limit: int = 8) -> Any:
    return ", ".join(items[:limit]) + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
