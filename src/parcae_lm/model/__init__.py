"""Parcae and GPT models."""

from parcae_lm.config import ModelConfig, ParcaeConfig
from parcae_lm.model.gpt import GPT
from parcae_lm.model.lm import IGNORE_INDEX, LanguageModel
from parcae_lm.model.parcae import Parcae


def build_model(config: ModelConfig) -> LanguageModel:
    return Parcae(config) if isinstance(config, ParcaeConfig) else GPT(config)


__all__ = ["GPT", "IGNORE_INDEX", "LanguageModel", "Parcae", "build_model"]
