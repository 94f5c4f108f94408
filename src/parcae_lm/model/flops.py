"""FLOP accounting for looped models, as the paper defines it (Appendix D): C = (2·N̂₁ + 6·N̂₂)·D.

N̂₁ counts parameters applied in iterations that run without gradient (forward only: 2 FLOPs per
parameter per token), N̂₂ those applied with gradient (forward + backward: 6). Embedding lookups (wte and
the value-embedding tables) are excluded; the unembedding (the tied head's matmul) is included.
Attention adds 2·2·T·d_attn per layer per token forward (QKᵀ and AV over a context of T, the PaLM /
nanochat convention, no causal halving), ×3 with backward.

The injection's input term B̄·e is computed once per forward in this implementation, so B counts once;
its per-iteration part Ā⊙h is elementwise and not counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from parcae_lm.config import GPTConfig, ModelConfig, ParcaeConfig
from parcae_lm.model.build import build_model
from parcae_lm.model.recurrence import expected_depths


@dataclass(frozen=True)
class ParamCounts:
    total: int  # unique parameters (tied head counted once)
    embedding: int  # wte + value-embedding tables (lookups)
    non_embedding: int
    core: int  # the recurrent block (0 for GPT)
    head: int  # the unembedding matmul's weights (counted for FLOPs even when tied)


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Exact parameter counts, computed from a model built on the meta device (no memory used)."""
    with torch.device("meta"):
        model = build_model(cfg)
    total = model.num_parameters()
    embedding = total - model.num_parameters(exclude_embeddings=True)
    core = sum(p.numel() for p in model.transformer.core_block.parameters()) if cfg.is_parcae else 0
    return ParamCounts(total, embedding, total - embedding, core, cfg.padded_vocab_size * cfg.n_embd)


@dataclass(frozen=True)
class FlopBreakdown:
    params: ParamCounts
    seq_len: int
    no_grad_steps: float  # E[n]
    grad_steps: float  # E[k]
    outer: float  # prelude + coda + C + injection + norms + head, fwd+bwd
    core_no_grad: float
    core_grad: float
    attention: float

    @property
    def per_token(self) -> float:
        return self.outer + self.core_no_grad + self.core_grad + self.attention

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_token"] = self.per_token
        return d


def training_flops(
    cfg: ModelConfig,
    seq_len: int | None = None,
    no_grad_steps: float | None = None,
    grad_steps: float | None = None,
) -> FlopBreakdown:
    """Training FLOPs per token. Depths default to the exact means of the config's sampling scheme."""
    T = seq_len or cfg.block_size
    counts = param_counts(cfg)
    d_attn = cfg.num_attention_heads * cfg.head_size
    if isinstance(cfg, GPTConfig):
        outer = 6 * (counts.non_embedding + (counts.head if cfg.tie_embeddings else 0))
        return FlopBreakdown(counts, T, 0.0, 0.0, outer, 0.0, 0.0, 12 * cfg.n_layer * T * d_attn)
    assert isinstance(cfg, ParcaeConfig)
    en, ek = expected_depths(cfg)
    n = en if no_grad_steps is None else no_grad_steps
    k = ek if grad_steps is None else grad_steps
    head = counts.head if cfg.tie_embeddings else 0  # an untied head is already in non_embedding
    outer = 6 * (counts.non_embedding - counts.core + head)
    d_core = cfg.recurrent_num_attention_heads * (
        cfg.recurrent_embedding_dimension // cfg.recurrent_num_attention_heads
    )
    n_outer = cfg.n_layers_in_prelude + cfg.n_layers_in_coda
    attn_core_fwd = 4 * cfg.n_layers_in_recurrent_block * T * d_core
    attention = 12 * n_outer * T * d_attn + attn_core_fwd * (n + 3 * k)
    return FlopBreakdown(counts, T, n, k, outer, 2 * counts.core * n, 6 * counts.core * k, attention)


def inference_flops(cfg: ModelConfig, seq_len: int | None = None, num_steps: int | None = None) -> float:
    """Forward-only FLOPs per token at test-time depth `num_steps` (default mean_recurrence)."""
    T = seq_len or cfg.block_size
    if isinstance(cfg, ParcaeConfig):
        r = cfg.mean_recurrence if num_steps is None else num_steps
        br = training_flops(cfg, T, no_grad_steps=r, grad_steps=0)
        attn_outer_fwd = 4 * (cfg.n_layers_in_prelude + cfg.n_layers_in_coda) * T * cfg.n_embd
        attn_core_fwd = br.attention - 3 * attn_outer_fwd  # the core's share is forward-only already
        return br.outer / 3 + br.core_no_grad + attn_outer_fwd + attn_core_fwd
    br = training_flops(cfg, T)
    return (br.outer + br.attention) / 3


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token at the config's expected depths (what budgets are converted with)."""
    return training_flops(cfg, seq_len).per_token
