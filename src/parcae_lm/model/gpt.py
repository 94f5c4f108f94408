"""The GPT baseline: the same blocks as Parcae, stacked once, with a plain (tied) head that trains on CPU."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from parcae_lm.config import GPTConfig
from parcae_lm.model.layers import Block, embedding, has_value_embedding, init_block, make_norm
from parcae_lm.model.lm import LanguageModel
from parcae_lm.model.recurrence import TrainDraw


class GPT(LanguageModel):
    config: GPTConfig

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
        kv_cache=None,
        num_steps=None,
        draw: TrainDraw | None = None,
        diagnostics: bool = False,
    ) -> dict[str, Tensor | None]:
        """Returns {"loss", "logits", "log_ppl"}. `num_steps`, `draw` and `diagnostics` are accepted so code
        can call Parcae and GPT alike: GPT has no loop, so num_steps must be None and the others do nothing."""
        if num_steps is not None:
            raise ValueError("GPT has no recurrence: num_steps must be None")
        B, T = input_ids.shape
        if kv_cache is not None:
            mask, offset = kv_cache.causal_mask(T, input_ids.device), kv_cache.pos
        else:
            mask, offset = self.attention_mask(doc_ids, attention_mask, T, input_ids.device), 0
        ctx = self.attn_context(self.config.head_size, T, input_ids.device, offset, position_ids, mask)
        x = self.transformer.wte(input_ids)
        for i, block in enumerate(self.transformer.h):
            ve = self.value_embeds[str(i)](input_ids) if str(i) in self.value_embeds else None
            slot = None if kv_cache is None else kv_cache.slot(i)
            if self.activation_checkpointing and torch.is_grad_enabled() and slot is None:
                x = checkpoint(block, x, ctx, ve, use_reentrant=False)
            else:
                x = block(x, ctx, ve, slot)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.head(self.transformer.ln_f(x), labels, return_logits)
