"""parcae-lm: stable looped language models (Parcae) — models, training, evaluation, scaling, inference.

import parcae_lm
model = parcae_lm.create_model("parcae-tiny")                 # or "parcae-small-140m" / "parcae-140m", ...
config = parcae_lm.create_config("parcae-small-140m", mean_recurrence=16)
model = parcae_lm.build_model(config)
out = model(input_ids, labels=labels)                          # {"loss", "logits", "log_ppl"}
parcae_lm.save_pretrained(model, "out/")                       # config.json + model.safetensors
model = parcae_lm.from_pretrained("out/")                      # ours, the authors' layout, or a hub id
run = parcae_lm.load_run("runs/latest")                        # model, tokenizer and run metadata
"""

from parcae_lm.checkpoint import from_pretrained, load_run, save_pretrained
from parcae_lm.config import GPTConfig, ModelConfig, ParcaeConfig, config_names, create_config
from parcae_lm.model import GPT, LanguageModel, Parcae, build_model, create_model

__version__ = "0.2.0"

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
    "load_run",
    "save_pretrained",
]
