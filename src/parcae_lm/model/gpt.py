"""The GPT baseline: the same blocks as Parcae, stacked once, with a plain (tied) head that trains on CPU."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from parcae_lm.config import GPTConfig
from parcae_lm.errors import ConfigError
from parcae_lm.model.kv_cache import FULL_CACHE, CacheStrategy, ModelCache
from parcae_lm.model.layers import Block, embedding, has_value_embedding, init_block, make_norm
from parcae_lm.model.lm import LanguageModel
from parcae_lm.model.recurrence import TrainDraw


class GPT(LanguageModel):
    config: GPTConfig
    config_class = GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        cfg = config
        d, V = cfg.n_embd, cfg.padded_vocab_size
        blocks = [
            Block(
                cfg,
                d,
                cfg.intermediate_size,
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                has_value_embedding(i, cfg.n_layer),
            )
            for i in range(cfg.n_layer)
        ]
        self.transformer = nn.ModuleDict(
            dict(wte=embedding(V, d), h=nn.ModuleList(blocks), ln_f=make_norm(cfg, d))
        )
        kv_width = cfg.num_key_value_heads * cfg.head_size
        self.value_embeds = nn.ModuleDict(
            {str(i): embedding(V, kv_width) for i, b in enumerate(blocks) if b.attn.ve_gate is not None}
        )
        self.lm_head = nn.Linear(d, V, bias=False)
        self.tie_weights()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_embeddings()
        for block in self.transformer.h:
            init_block(block, self.config, self.config.n_embd, self.config.n_layer)

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        return_logits: bool = True,
        doc_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: ModelCache | None = None,
        num_steps=None,
        *,
        input_pos: Tensor | None = None,
        input_pos_maxp1: int | None = None,
        logits_to_keep: int = 0,
        draw: TrainDraw | None = None,
        diagnostics: bool = False,
    ) -> dict[str, Tensor | None]:
        """Returns {"loss", "logits", "log_ppl"}; the arguments mean what they mean for `Parcae.forward`.
        GPT has no loop: `num_steps` must be None, and `draw` and `diagnostics` change nothing (they are
        accepted so code can call Parcae and GPT alike)."""
        if num_steps is not None:
            raise ValueError("GPT has no recurrence: num_steps must be None")
        self.check_input_ids(input_ids)
        B, T = input_ids.shape
        positions = self.positions(input_ids, position_ids, kv_cache, input_pos)
        if kv_cache is not None:
            if doc_ids is not None or attention_mask is not None:
                raise ValueError(
                    "cached decoding takes no doc_ids/attention_mask (rows are separate sequences)"
                )
            mask = self.cache_mask(input_pos, kv_cache.length, input_pos_maxp1)
        else:
            mask = self.attention_mask(doc_ids, attention_mask, T, input_ids.device)
        ctx = self.attn_context(
            self.config.head_size, T, input_ids.device, positions, mask, input_pos, input_pos_maxp1
        )
        x = self.transformer.wte(input_ids)
        for i, block in enumerate(self.transformer.h):
            ve = self.value_embedding(i, input_ids)
            if kv_cache is not None:
                x = block(x, ctx, ve, kv_cache.prelude[i])
            elif self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, ctx, ve, use_reentrant=False)
            else:
                x = block(x, ctx, ve)
        return self.head(self.transformer.ln_f(x), labels, return_logits, logits_to_keep)

    def _new_kv_cache(self, caches, num_steps: int | None, strategy: CacheStrategy) -> ModelCache:
        if num_steps is not None:
            raise ValueError("GPT has no recurrence: num_steps must be None")
        if strategy != FULL_CACHE:
            raise ConfigError("GPT has no recurrence: only the full cache strategy applies")
        return ModelCache(caches(self.transformer.h))
