"""Configurations, the bottom layer of the package: plain dataclasses that import nothing else of ours.

`config.model` describes architectures (Parcae, GPT, the named configs); `config.train` describes a
training run. The model is built from a config (`parcae_lm.model.build_model`), never the other way round.
"""

from parcae_lm.config.model import (
    ALIASES,
    NAMED_CONFIGS,
    Activation,
    CurriculumKind,
    CurriculumTarget,
    Discretization,
    GPTConfig,
    InitStrategy,
    Injection,
    IterationMethod,
    ModelConfig,
    Norm,
    ParcaeConfig,
    SamplingScheme,
    StateInit,
    config_names,
    create_config,
    from_dict,
)

__all__ = [
    "ALIASES",
    "NAMED_CONFIGS",
    "Activation",
    "CurriculumKind",
    "CurriculumTarget",
    "Discretization",
    "GPTConfig",
    "InitStrategy",
    "Injection",
    "IterationMethod",
    "ModelConfig",
    "Norm",
    "ParcaeConfig",
    "SamplingScheme",
    "StateInit",
    "config_names",
    "create_config",
    "from_dict",
]
