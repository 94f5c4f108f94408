"""transformers integration (the `hf` extra): our models behind AutoConfig / AutoModelForCausalLM /
AutoTokenizer, with a KV cache that makes `generate()` linear-time.

    from parcae_lm.infer.hf import export_hf
    export_hf("runs/my-run", "my-run-hf")     # a run directory, a save_pretrained directory or a hub id

    # anywhere with parcae-lm installed, in a fresh process:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("my-run-hf", trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained("my-run-hf", trust_remote_code=True)  # the config is remote code
    model.generate(ids, max_new_tokens=32, do_sample=False)

The export is a push_to_hub-ready directory: config.json (our config under "parcae", plus `model_type`,
`architectures` and an `auto_map` naming the two code files), configuration_parcae.py and
modeling_parcae.py (which import this module: the forward is parcae-lm's own, so the package must be
installed where the model is loaded), model.safetensors (our weights, unchanged names), the tokenizer at
the root (tokenizer.json + tokenizer_config.json) and generation_config.json. Our own loaders read the
export too (`from_pretrained`, `load_run`, every command that takes a model).

`ParcaeForCausalLM` keeps our modules under their own names (`transformer.*`, `value_embeds.*`,
`lm_head`), so our safetensors load as they are. `generate()` runs on `ParcaeCache`, a transformers
`Cache` around our preallocated `ModelCache` (grown by doubling, so a whole generation costs linear time);
a left-padded batch (an attention mask with zeros) is decoded without the cache, recomputing the prefix.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from parcae_lm.errors import CheckpointError, ConfigError, TokenizerError

try:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        GenerationMixin,
        PretrainedConfig,
        PreTrainedModel,
    )
    from transformers.cache_utils import Cache
    from transformers.modeling_outputs import CausalLMOutputWithPast
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the transformers integration needs the `hf` extra: pip install 'parcae-lm[hf]'") from e

from parcae_lm.checkpoint import load_tokenizer, resolve_directory
from parcae_lm.config import from_dict
from parcae_lm.files import atomic_write_text
from parcae_lm.model import LanguageModel, ModelCache, build_model
from parcae_lm.model.decode import cache_length

MODEL_TYPE = "parcae"
REMOTE_FILES = ("configuration_parcae.py", "modeling_parcae.py")
AUTO_MAP = {
    "AutoConfig": "configuration_parcae.ParcaeHFConfig",
    "AutoModelForCausalLM": "modeling_parcae.ParcaeForCausalLM",
}


class ParcaeHFConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, parcae: dict | None = None, **kwargs) -> None:
        self.parcae = dict(parcae or {})
        kwargs.setdefault("tie_word_embeddings", bool(self.parcae.get("tie_embeddings", True)))
        super().__init__(**kwargs)
        layers = ("n_layers_in_prelude", "n_layers_in_recurrent_block", "n_layers_in_coda")
        self.num_hidden_layers = self.parcae.get("n_layer") or sum(self.parcae.get(k, 0) for k in layers)
        if "vocab_size" in self.parcae:  # logits are cut to the real vocabulary (no padding rows)
            self.vocab_size = self.parcae["vocab_size"]
        if "block_size" in self.parcae:
            self.max_position_embeddings = self.parcae["block_size"]


class ParcaeCache(Cache):
    """transformers' view of our KV cache: a `ModelCache` for the whole batch and the positions written.
    It grows by doubling (up to the model's context) when a forward needs more room."""

    def __init__(self, model: LanguageModel, batch_size: int) -> None:
        super().__init__(layers=[])
        self.model, self.rows = model, batch_size
        self.inner: ModelCache | None = None
        self.seen = 0

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_linear(self) -> list[bool]:
        return [False]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.model.config.block_size

    def ensure(self, length: int) -> ModelCache:
        """The cache, with room for `length` positions (entries written so far are kept)."""
        if self.inner is not None and self.inner.length >= length:
            return self.inner
        new = self.model.new_kv_cache(self.rows, cache_length(length, self.model.config.block_size))
        if self.inner is not None:
            for old, fresh in zip(self.inner.layers(), new.layers()):
                fresh.k[:, :, : self.seen] = old.k[:, :, : self.seen]
                fresh.v[:, :, : self.seen] = old.v[:, :, : self.seen]
        self.inner = new
        return new

    def reorder_cache(self, beam_idx: Tensor) -> None:
        if self.inner is not None:
            for c in self.inner.layers():
                c.k.copy_(c.k[beam_idx])
                c.v.copy_(c.v[beam_idx])


class ParcaeForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ParcaeHFConfig
    base_model_prefix = ""
    main_input_name = "input_ids"

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

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the forward makes its own ParcaeCache

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
        cache: ParcaeCache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (and the shifted next-token loss with `labels`). With `use_cache=True` (generate) or a
        `cache`, the tokens continue the cache's sequence and the cache comes back in the output."""
        vocab = self.inner.config.vocab_size
        if cache is None and use_cache and not self.training and labels is None:
            cache = ParcaeCache(self.inner, input_ids.shape[0])
        if cache is not None:
            start, T = cache.seen, input_ids.shape[1]
            positions = torch.arange(start, start + T, device=input_ids.device)
            out = self.inner(
                input_ids,
                kv_cache=cache.ensure(start + T),
                input_pos=positions,
                input_pos_maxp1=start + T,
                logits_to_keep=logits_to_keep,
            )
            cache.seen += T
            return CausalLMOutputWithPast(logits=out["logits"][..., :vocab], cache=cache)
        # Left padding from a batched tokenizer call: mask the pad keys (the model never attends to them).
        if attention_mask is not None and bool((attention_mask == 1).all()):
            attention_mask = None
        logits = self.inner(input_ids, attention_mask=attention_mask)["logits"][..., :vocab]
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        cache: ParcaeCache | None = None,
        attention_mask: Tensor | None = None,
        use_cache: bool = True,
        **kwargs,
    ) -> dict:
        padded = attention_mask is not None and not bool(attention_mask.all())
        if padded or not use_cache:  # the whole prefix each step, masked
            return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if cache is not None:
            input_ids = input_ids[:, cache.get_seq_length() :]
        return {"input_ids": input_ids, "cache": cache, "use_cache": True, "logits_to_keep": 1}


AutoConfig.register(MODEL_TYPE, ParcaeHFConfig, exist_ok=True)
AutoModelForCausalLM.register(ParcaeHFConfig, ParcaeForCausalLM, exist_ok=True)


def export_hf(model: str | os.PathLike, out_dir: str | os.PathLike, tokenizer: str | None = None) -> Path:
    """Write a transformers-loadable, push_to_hub-ready copy of a model (a run directory, a save_pretrained
    directory or a hub id): see the module docstring for the layout. Weights are hard-linked or copied."""
    src, out = resolve_directory(model), Path(out_dir)
    cfg_path, weights = src / "config.json", src / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(
            f"{src} is not a save_pretrained directory (needs config.json + model.safetensors)"
        )
    if out.resolve() == src.resolve():
        raise ConfigError(f"export_hf writes a separate directory; {out} is the source itself")
    raw = json.loads(cfg_path.read_text())
    raw = raw.get("parcae", raw) if raw.get("model_type") == MODEL_TYPE else raw
    from_dict(raw)  # validate before writing anything
    try:
        tok = load_tokenizer(src, tokenizer)
    except TokenizerError:
        if tokenizer is not None:
            raise
        tok = None  # a bare save_pretrained directory: the export has no tokenizer either
    out.mkdir(parents=True, exist_ok=True)
    special = (
        {}
        if tok is None
        else {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    )
    hf = ParcaeHFConfig(parcae=raw, architectures=["ParcaeForCausalLM"], auto_map=AUTO_MAP, **special)
    atomic_write_text(out / "config.json", hf.to_json_string(use_diff=False))
    generation = {"_from_model_config": True, **special}
    atomic_write_text(out / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    remote = resources.files("parcae_lm.infer").joinpath("remote")
    for name in REMOTE_FILES:
        atomic_write_text(out / name, remote.joinpath(name).read_text())
    target = out / "model.safetensors"
    if not (target.exists() and os.path.samefile(target, weights)):
        tmp = out / ".model.safetensors.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(weights, tmp)
        except OSError:
            shutil.copyfile(weights, tmp)
        os.replace(tmp, target)
    if tok is not None:
        tok.save(out)
    return out
