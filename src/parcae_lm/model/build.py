"""Build a model from its config: the one place that maps a config class to a model class."""

from __future__ import annotations

from parcae_lm.config import ModelConfig, ParcaeConfig, create_config
from parcae_lm.model.gpt import GPT
from parcae_lm.model.lm import LanguageModel
from parcae_lm.model.parcae import Parcae


def build_model(config: ModelConfig) -> LanguageModel:
    """A freshly initialised Parcae or GPT for `config` (on the default device; use
    `with torch.device("meta"):` to build a large one without memory)."""
    return Parcae(config) if isinstance(config, ParcaeConfig) else GPT(config)


def create_model(name: str, **overrides) -> LanguageModel:
    """A freshly initialised model of a named config (`parcae-tiny`, `parcae-140m`, ...) with field overrides."""
    return build_model(create_config(name, **overrides))
