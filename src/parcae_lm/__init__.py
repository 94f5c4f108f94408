"""parcae-lm: stable looped language models (Parcae) — models, training, evaluation, scaling, inference.

import parcae_lm
model = parcae_lm.create_model("parcae-tiny")                 # or "parcae-small-140m" / "parcae-140m", ...
config = parcae_lm.create_config("parcae-small-140m", mean_recurrence=16)
model = parcae_lm.build_model(config)
out = model(input_ids, labels=labels)                          # {"loss", "logits", "log_ppl"}
parcae_lm.save_pretrained(model, "out/")                       # config.json + model.safetensors
model = parcae_lm.from_pretrained("out/")                      # ours, the authors' layout, or a hub id
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

# Exports load on first use, so `parcae --help` and the CLI's start-up settings run before torch loads.
_EXPORTS = {
    "from_pretrained": "parcae_lm.checkpoint",
    "save_pretrained": "parcae_lm.checkpoint",
    "GPTConfig": "parcae_lm.config",
    "ModelConfig": "parcae_lm.config",
    "ParcaeConfig": "parcae_lm.config",
    "config_names": "parcae_lm.config",
    "create_config": "parcae_lm.config",
    "GPT": "parcae_lm.model",
    "LanguageModel": "parcae_lm.model",
    "Parcae": "parcae_lm.model",
    "build_model": "parcae_lm.model",
}

if TYPE_CHECKING:
    from parcae_lm.checkpoint import from_pretrained, save_pretrained
    from parcae_lm.config import GPTConfig, ModelConfig, ParcaeConfig, config_names, create_config
    from parcae_lm.model import GPT, LanguageModel, Parcae, build_model


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'parcae_lm' has no attribute {name!r}")


def create_model(name: str, **overrides) -> LanguageModel:
    """Build a freshly initialised model from a named config with field overrides."""
    from parcae_lm.config import create_config

    from parcae_lm.model import build_model

    return build_model(create_config(name, **overrides))


__all__ = [
    "GPT",
    "GPTConfig",
    "LanguageModel",
    "ModelConfig",
    "Parcae",
    "ParcaeConfig",
    "build_model",
    "config_names",
    "create_config",
    "create_model",
    "from_pretrained",
    "save_pretrained",
]
