"""What Parcae and GPT share around their blocks: embeddings, value embeddings, positions and attention
masks (with or without a KV cache), the tied head with its loss, parameter accounting and generation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parcae_lm import runtime
from parcae_lm.config import ModelConfig, create_config
from parcae_lm.errors import ConfigError
from parcae_lm.model.decode import generate
from parcae_lm.model.kv_cache import FULL_CACHE, CacheStrategy, KVCache, ModelCache
from parcae_lm.model.layers import AttnContext, Block, init_matrix, rope_table
from parcae_lm.model.loss import IGNORE_INDEX, linear_cross_entropy


class LanguageModel(nn.Module):
    config: ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # glibc would otherwise return every freed activation to the OS and page-fault it back in on the
        # next step (~25% of a CPU training step on the benchmark model): see `runtime.keep_freed_memory`.
        runtime.keep_freed_memory()
        self.config = config
        # Recompute activations in backward instead of storing them (Parcae: each grad-carrying iteration;
        # GPT: each block). Saves memory at the cost of a second forward through them.
        self.activation_checkpointing = False
        self._rope_cache: dict[tuple, Tensor] = {}

    config_class: type[ModelConfig] = ModelConfig

    @classmethod
    def from_name(cls, name: str, **overrides) -> LanguageModel:
        """A freshly initialised model of a named config: `Parcae.from_name("parcae-140m")` (litgpt style;
        `parcae_lm.create_model(name)` picks the class for you)."""
        config = create_config(name, **overrides)
        if not isinstance(config, cls.config_class):
            raise ConfigError(f"{name!r} is a {type(config).__name__}, not a config for {cls.__name__}")
        return cls(config)

    # -- inputs -----------------------------------------------------------------------------------
    def check_input_ids(self, input_ids: Tensor) -> None:
        """Refuse anything but a [B, T] integer tensor of ids in [0, vocab_size) with a ValueError.

        An id past the vocabulary would raise an unclear IndexError in the embedding lookup, or, inside
        the table's padding rows, silently embed an untrained vector. The range is checked when the ids
        are on the CPU (one pass over them, no device to wait for); on an accelerator the check would wait
        for the device at every forward, so there the data path checks the ids on the host instead
        (`data.shards.TokenStream.read`). A compiled graph (the static decode step) skips it: it only feeds
        back ids the model itself picked."""
        if input_ids.dim() != 2 or input_ids.is_floating_point() or input_ids.is_complex():
            raise ValueError(
                f"input_ids must be a [batch, seq] integer tensor, got {input_ids.dtype} of shape "
                f"{tuple(input_ids.shape)}"
            )
        if input_ids.device.type != "cpu" or torch.compiler.is_compiling() or input_ids.numel() == 0:
            return
        vocab = self.config.vocab_size
        low, high = (int(v) for v in torch.aminmax(input_ids))
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise ValueError(
                f"token id {bad} is outside the vocabulary of this model (ids 0..{vocab - 1}); the ids come "
                "from a different tokenizer, or are corrupted"
            )

    def rope(self, head_size: int, device: torch.device) -> Tensor:
        """RoPE (cos, sin) for every position < block_size, [block_size, head_size/2, 2] fp32 (built once)."""
        key = (head_size, str(device))
        if key not in self._rope_cache:
            cfg = self.config
            table = rope_table(cfg.block_size, head_size, cfg.rope_base, cfg.rope_condense_ratio, device)
            self._rope_cache[key] = torch.view_as_real(table).contiguous()
        return self._rope_cache[key]

    def positions(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        kv_cache: ModelCache | None = None,
        input_pos: Tensor | None = None,
    ) -> Tensor | None:
        """The queries' positions ([T] or [B, T]), or None for 0..T−1. Checks they fit the context."""
        T = input_ids.shape[1]
        if (kv_cache is None) != (input_pos is None):
            raise ValueError("kv_cache and input_pos go together: give both for cached decoding, or neither")
        pos = input_pos if input_pos is not None else position_ids
        limit = self.config.block_size if kv_cache is None else min(self.config.block_size, kv_cache.length)
        if pos is None:
            if limit < T:
                raise ValueError(
                    f"sequence of {T} positions exceeds block_size={self.config.block_size} of this model"
                )
            return None
        if pos.shape[-1] != T:
            raise ValueError(f"positions have shape {tuple(pos.shape)}, expected [..., {T}] for {T} tokens")
        return pos

    def attn_context(
        self,
        head_size: int,
        seq_len: int,
        device: torch.device,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
        input_pos: Tensor | None = None,
        kv_length: int | None = None,
    ) -> AttnContext:
        """RoPE rotations for the queries' positions (default 0..T−1) with the mask and cache placement."""
        table = self.rope(head_size, device)
        freqs = table[:seq_len] if positions is None else table[positions]
        return AttnContext(freqs, mask, input_pos, kv_length)

    @staticmethod
    def attention_mask(
        doc_ids: Tensor | None, attention_mask: Tensor | None, seq_len: int, device: torch.device
    ) -> Tensor | None:
        """Causal ∧ same-document ∧ non-padding-key mask [B, 1, T, T], or None for plain causal attention.

        `attention_mask` is [B, T] with 1 for real tokens and 0 for padding keys. Every query may always
        attend to itself, so padded rows never produce NaNs (their labels are ignored anyway).
        """
        if doc_ids is None and attention_mask is None:
            return None
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
        mask = causal[None, None]
        if doc_ids is not None:
            mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        return mask | torch.eye(seq_len, dtype=torch.bool, device=device)

    @staticmethod
    def cache_mask(input_pos: Tensor, cache_length: int, kv_length: int | None) -> Tensor | None:
        """Which cached keys each query sees: key position ≤ query position, [1 or B, 1, T, L]. None when
        that is every key attention reads anyway (one query per row at a shared position, keys cut there)."""
        T = input_pos.shape[-1]
        if T == 1 and input_pos.dim() == 1 and kv_length is not None:
            return None
        keys = torch.arange(cache_length if kv_length is None else kv_length, device=input_pos.device)
        mask = keys <= input_pos[..., None]  # [T, L] or [B, T, L]
        return mask[None, None] if mask.dim() == 2 else mask[:, None]

    def value_embedding(self, layer: int, input_ids: Tensor) -> Tensor | None:
        key = str(layer)
        return self.value_embeds[key](input_ids) if key in self.value_embeds else None

    def new_kv_cache(
        self,
        batch_size: int,
        max_len: int,
        num_steps: int | None = None,
        strategy: CacheStrategy = FULL_CACHE,
        dtype: torch.dtype | None = None,
    ) -> ModelCache:
        """A preallocated KV cache for `batch_size` rows of up to `max_len` positions (see `kv_cache`)."""
        if max_len > self.config.block_size:
            raise ValueError(
                f"KV cache length {max_len} exceeds the model's block_size={self.config.block_size}"
            )
        param = self.transformer.wte.weight
        dtype, device = dtype or param.dtype, param.device

        def caches(blocks) -> list[KVCache]:
            return [
                KVCache(batch_size, b.attn.n_kv, max_len, b.attn.head_size, device, dtype) for b in blocks
            ]

        return self._new_kv_cache(caches, num_steps, strategy)

    # -- head -------------------------------------------------------------------------------------
    def head(
        self, y: Tensor, labels: Tensor | None, return_logits: bool, logits_to_keep: int = 0
    ) -> dict[str, Tensor | None]:
        """Loss and/or logits of the final hidden states; `logits_to_keep` > 0 computes only the last ones."""
        if labels is not None and not return_logits:
            # Training path: chunked fused head + loss, never holding [tokens, vocab] fp32 logits.
            flat = labels.reshape(-1)
            loss = linear_cross_entropy(
                y.reshape(-1, y.shape[-1]), self.lm_head.weight, flat, softcap=self.config.logit_softcap
            )
            return {"loss": loss, "logits": None, "log_ppl": loss.detach()}
        if logits_to_keep > 0:
            y = y[:, -logits_to_keep:]
        logits = self.lm_head(y).float()
        if self.config.logit_softcap is not None:
            c = self.config.logit_softcap
            logits = c * torch.tanh(logits / c)
        if labels is not None:
            flat = labels.reshape(-1)
            nll = F.cross_entropy(
                logits.view(-1, logits.shape[-1]), flat, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            loss = nll / (flat != IGNORE_INDEX).sum().clamp_min(1)
        else:
            loss = torch.zeros((), device=y.device)
        return {"loss": loss, "logits": logits if return_logits else None, "log_ppl": loss.detach()}

    def init_embeddings(self) -> None:
        """wte (and an untied head) with std √(2/5d); value embeddings keep N(0, 1) like the reference."""
        std = self.config.embedding_std
        init_matrix(self.transformer.wte.weight, std, self.config.init_orthogonal)
        if not self.config.tie_embeddings:
            init_matrix(self.lm_head.weight, std, self.config.init_orthogonal)
        for emb in self.value_embeds.values():
            if not emb.weight.is_meta:
                nn.init.normal_(emb.weight)

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    # -- accounting -------------------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters; `exclude_embeddings` drops wte and the value-embedding tables (pure lookups)."""
        seen, total = set(), 0
        skip = set()
        if exclude_embeddings:
            skip = {id(self.transformer.wte.weight)} | {id(e.weight) for e in self.value_embeds.values()}
        for p in self.parameters():
            if id(p) in seen or id(p) in skip:
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def compile_blocks(self, **kwargs) -> None:
        """torch.compile every transformer block in place. The loop over iterations (whose length and
        active rows vary per step) stays in Python; each block compiles once per input shape.

        `kwargs` go to `torch.compile`. Without a mode or options, blocks on CPU are called through
        inductor's C++ wrapper instead of its Python one (less per-call overhead, ~1 MFU point on the
        benchmark model; compiling takes longer)."""
        if self.device.type == "cpu" and not {"mode", "options"} & kwargs.keys():
            kwargs["options"] = {"cpp_wrapper": True}
        # All blocks share Block.forward's code object, whose variants multiply (value embedding or not ×
        # grad mode × mask or not × KV cache or not × static/dynamic batch): dynamo's default of 8 per code
        # object sends the rest back to eager mid-run (a training run with evaluation and sampling hits it).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for module in self.modules():
            if isinstance(module, Block):
                module.compile(**kwargs)

    def diagnostics(self) -> dict[str, float]:
        """Loop diagnostics (the spectral radius of Parcae's state matrix); none for a model without a loop."""
        return {}

    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    # -- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, **kwargs) -> Tensor:
        """Sample continuations with a preallocated KV cache; see `parcae_lm.model.decode.generate`."""
        return generate(self, input_ids, max_new_tokens, **kwargs)
