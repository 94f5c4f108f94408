"""Optional transformers integration (the `hf` extra): AutoConfig / AutoModelForCausalLM for our models.

    from parcae_lm.infer.hf import export_hf
    export_hf("runs/my-run", "runs/my-run-hf")          # config.json with model_type + the same weights
    import parcae_lm.infer.hf                            # registers "parcae" with the Auto classes
    model = AutoModelForCausalLM.from_pretrained("runs/my-run-hf")
    model.generate(ids, max_new_tokens=32, do_sample=False)

The wrapper owns our model's modules under the same names (`transformer.*`, `value_embeds.*`,
`lm_head`), so our `model.safetensors` loads unchanged. `generate()` runs without a transformers cache:
each step recomputes the whole prefix at the model's fixed test-time depth (correct, slower than our
cached `model.generate`; greedy outputs are equal). The exported directory gets its own config.json
because our loader rejects unknown keys such as `model_type`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

from parcae_lm.errors import CheckpointError, ConfigError

try:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        GenerationMixin,
        PretrainedConfig,
        PreTrainedModel,
    )
    from transformers.modeling_outputs import CausalLMOutput
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the transformers integration needs the `hf` extra: pip install 'parcae-lm[hf]'") from e

from parcae_lm.config import from_dict
from parcae_lm.model import build_model

MODEL_TYPE = "parcae"


class ParcaeHFConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, parcae: dict | None = None, **kwargs) -> None:
        self.parcae = dict(parcae or {})
        vocab = self.parcae.get("vocab_size")  # logits are cut to the real vocabulary (no padding rows)
        kwargs.setdefault("tie_word_embeddings", bool(self.parcae.get("tie_embeddings", True)))
        kwargs.setdefault("use_cache", False)  # no transformers cache: generate() recomputes the prefix
        super().__init__(**kwargs)
        layers = [self.parcae.get(k, 0) for k in ("n_layers_in_prelude", "n_layers_in_recurrent_block")]
        self.num_hidden_layers = self.parcae.get("n_layer") or sum(layers) + self.parcae.get(
            "n_layers_in_coda", 0
        )
        if vocab is not None:
            self.vocab_size = vocab


class ParcaeForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ParcaeHFConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _supports_cache_class = False

    def __init__(self, config: ParcaeHFConfig) -> None:
        super().__init__(config)
        inner = build_model(from_dict(config.parcae))
        # Adopt the modules under their own names so state-dict keys match our safetensors files.
        self.transformer = inner.transformer
        self.value_embeds = inner.value_embeds
        self.lm_head = inner.lm_head
        object.__setattr__(self, "inner", inner)  # not registered: its modules are already ours
        inner.training = self.training
        if inner.config.tie_embeddings:
            self._tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
        self.post_init()

    def train(self, mode: bool = True):
        self.inner.training = mode  # the inner model is not a registered submodule; keep its flag in sync
        return super().train(mode)

    def _init_weights(self, module) -> None:
        pass  # weights come from the checkpoint (our init lives in the model's reset_parameters)

    def get_input_embeddings(self):
        return self.transformer.wte

    def get_output_embeddings(self):
        return self.lm_head

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        # Left padding from a batched tokenizer call: mask the pad keys (the model never attends to them).
        if attention_mask is not None and bool((attention_mask == 1).all()):
            attention_mask = None
        out = self.inner(input_ids, attention_mask=attention_mask)
        logits = out["logits"][..., : self.inner.config.vocab_size]
        loss = None
        if labels is not None:
            shift = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
            loss = shift
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs
    ):
        return {"input_ids": input_ids, "attention_mask": attention_mask}


AutoConfig.register(MODEL_TYPE, ParcaeHFConfig, exist_ok=True)
AutoModelForCausalLM.register(ParcaeHFConfig, ParcaeForCausalLM, exist_ok=True)


def export_hf(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a transformers-loadable copy of a `save_pretrained` directory (weights hard-linked or copied)."""
    from parcae_lm.files import atomic_write_text

    src, out = Path(model_dir), Path(out_dir)
    cfg_path, weights = src / "config.json", src / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(
            f"{src} is not a save_pretrained directory (needs config.json + model.safetensors)"
        )
    if out.resolve() == src.resolve():
        raise ConfigError(
            "export_hf writes a separate directory: our loader rejects transformers' config keys"
        )
    raw = json.loads(cfg_path.read_text())
    from_dict(raw)  # validate before writing anything
    out.mkdir(parents=True, exist_ok=True)
    hf = ParcaeHFConfig(parcae=raw, architectures=["ParcaeForCausalLM"])
    atomic_write_text(out / "config.json", hf.to_json_string(use_diff=False))
    target = out / "model.safetensors"
    target.unlink(missing_ok=True)
    try:
        os.link(weights, target)
    except OSError:
        shutil.copyfile(weights, target)
    tok = src / "tokenizer"
    if tok.is_dir() and not (out / "tokenizer").exists():
        shutil.copytree(tok, out / "tokenizer")
    return out
