"""Parcae and GPT models, their KV caches and decoding."""

from parcae_lm.model.build import build_model, create_model
from parcae_lm.model.decode import Decoder, generate, sample_next
from parcae_lm.model.gpt import GPT
from parcae_lm.model.kv_cache import FULL_CACHE, CacheStrategy, KVCache, ModelCache
from parcae_lm.model.lm import LanguageModel
from parcae_lm.model.loss import IGNORE_INDEX
from parcae_lm.model.parcae import Parcae

__all__ = [
    "FULL_CACHE",
    "GPT",
    "IGNORE_INDEX",
    "CacheStrategy",
    "Decoder",
    "KVCache",
    "LanguageModel",
    "ModelCache",
    "Parcae",
    "build_model",
    "create_model",
    "generate",
    "sample_next",
]
