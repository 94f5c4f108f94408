"""What Parcae and GPT share around their blocks: embeddings, value embeddings, attention masks, the
tied head with its loss, parameter accounting and generation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parcae_lm.config import ModelConfig
from parcae_lm.model.layers import AttnContext, Block, init_matrix, rope_table
from parcae_lm.model.loss import IGNORE_INDEX, linear_cross_entropy


class LanguageModel(nn.Module):
    config: ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # Recompute activations in backward instead of storing them (Parcae: each grad-carrying iteration;
        # GPT: each block). Saves memory at the cost of a second forward through them.
        self.activation_checkpointing = False
        self._rope_cache: dict[tuple, Tensor] = {}

    # -- inputs -----------------------------------------------------------------------------------
    def attn_context(
        self,
        head_size: int,
        seq_len: int,
        device: torch.device,
        offset: int = 0,
        position_ids: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> AttnContext:
        """RoPE tables for positions offset..offset+T (or `position_ids`, [T] or [B, T]) plus the mask."""
        cfg = self.config
        key = (head_size, str(device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_table(
                cfg.block_size, head_size, cfg.rope_base, cfg.rope_condense_ratio, device
            )
        freqs = self._rope_cache[key]
        if position_ids is not None:
            return AttnContext(freqs[position_ids], mask)
        if offset + seq_len > cfg.block_size:
            raise ValueError(
                f"sequence of {offset + seq_len} positions exceeds block_size={cfg.block_size} of this model"
            )
        return AttnContext(freqs[offset : offset + seq_len], mask)

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

    # -- head -------------------------------------------------------------------------------------
    def head(self, y: Tensor, labels: Tensor | None, return_logits: bool) -> dict[str, Tensor | None]:
        if labels is not None and not return_logits:
            # Training path: chunked fused head + loss, never holding [tokens, vocab] fp32 logits.
            flat = labels.reshape(-1)
            loss = linear_cross_entropy(
                y.reshape(-1, y.shape[-1]), self.lm_head.weight, flat, softcap=self.config.logit_softcap
            )
            return {"loss": loss, "logits": None, "log_ppl": loss.detach()}
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
        """Sample continuations with a preallocated KV cache; see `parcae_lm.infer.generate.generate`."""
        from parcae_lm.infer.generate import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)
