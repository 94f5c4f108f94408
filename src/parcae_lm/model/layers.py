"""Transformer building blocks shared by Parcae and GPT: norms, RoPE, attention, MLP, block, init.

Numerics follow the reference exactly: RMSNorm in fp32 then × weight, interleaved-pair RoPE in fp32,
QK-norm (no weight, dtype eps) *after* RoPE, ½·ReLU², gated value embeddings reading 32 channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parcae_lm.config import Activation, InitStrategy, ModelConfig, Norm
from parcae_lm.model.kv_cache import KVCache

VE_GATE_CHANNELS = 32  # the value-embedding gate reads only the first 32 channels of the normed input


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # One fused kernel; the same numbers as the three steps below, forward and backward.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # Normalise in fp32 even under autocast, cast back, *then* scale (as the reference does).
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight


def embedding(vocab: int, dim: int) -> nn.Embedding:
    """An embedding left uninitialised (the model initialises it); skipping PyTorch's default N(0,1) draw
    also keeps construction on the meta device instant."""
    return nn.Embedding(vocab, dim, _weight=torch.empty(vocab, dim))


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm_class_name == Norm.RMSNORM:
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


def activation(kind: Activation, x: Tensor) -> Tensor:
    if kind == Activation.RELU2:
        return 0.5 * F.relu(x).square()
    if kind == Activation.GELU:
        return F.gelu(x)
    if kind == Activation.RELU:
        return F.relu(x)
    return F.silu(x)


# --------------------------------------------------------------------------------------------------
# Rotary embeddings: pairs (x[2i], x[2i+1]) rotated by angle pos/condense · base^(−2i/D).


def rope_table(length: int, head_size: int, base: float, condense: float, device=None) -> Tensor:
    """Rotations e^{iθ} for positions 0..length−1 as a complex64 tensor [length, head_size/2]."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float64, device=device) / head_size)
    pos = torch.arange(length, dtype=torch.float64, device=device) / condense
    angles = torch.outer(pos, inv_freq).float()
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """x: [B, T, H, D]; freqs: (cos, sin) pairs [T, D/2, 2] or [B, T, D/2, 2] (`view_as_real` of
    `rope_table`). The pair (a, b) is the number a + ib, so one complex multiply gives
    (a cos − b sin, b cos + a sin), computed in fp32."""
    if torch.compiler.is_compiling():
        return rope_real(x, freqs)
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * torch.view_as_complex(freqs).unsqueeze(-2)).flatten(-2).type_as(x)


def rope_real(x: Tensor, freqs: Tensor) -> Tensor:
    """The same rotation in real arithmetic. Inductor cannot generate code for complex tensors but fuses
    this into one kernel; in eager mode the strided real version is the slower of the two."""
    cos, sin = freqs.unsqueeze(-3).unbind(-1)  # each [.., T, 1, D/2]
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2).type_as(x)


@dataclass
class AttnContext:
    """Per-forward attention inputs shared by all blocks of one width.

    freqs: RoPE (cos, sin) for the queries' positions, [T, D/2, 2] or [B, T, D/2, 2].
    mask: None for plain causal attention (or, with a cache, for attending to every key it returns), else
        a bool tensor [B or 1, 1, Tq, Tk] (True = attend).
    input_pos: with a KV cache, where the new keys and values go ([T], or [B, T] per row).
    kv_length: with a KV cache, how many leading positions attention reads (None: the whole buffer, whose
        unwritten entries the mask hides — every step then has the same shapes, which compiled decoding needs).
    rows: with a KV cache, which of its rows this forward computes (None: all, in order).
    """

    freqs: Tensor
    mask: Tensor | None = None
    input_pos: Tensor | None = None
    kv_length: int | None = None
    rows: Tensor | None = None

    def subset(self, idx: Tensor | slice) -> AttnContext:
        """The same context restricted to batch rows `idx` (depth-dependent execution, adaptive decoding).
        Per-row tensors are cut; tensors shared by all rows stay as they are."""
        freqs = self.freqs[idx] if self.freqs.dim() == 4 else self.freqs
        mask = self.mask[idx] if self.mask is not None and self.mask.shape[0] > 1 else self.mask
        input_pos, rows = self.input_pos, self.rows
        if input_pos is not None:  # cached: the cache must know which of its rows are computed
            input_pos = input_pos[idx] if input_pos.dim() == 2 else input_pos
            rows = idx if rows is None else rows[idx]
        return AttnContext(freqs, mask, input_pos, self.kv_length, rows)


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int, n_kv: int, bias: bool, qk_norm: bool, has_ve: bool) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.head_size = n_head, n_kv, d // n_head
        self.qk_norm = qk_norm
        self.c_q = nn.Linear(d, n_head * self.head_size, bias=bias)
        self.c_k = nn.Linear(d, n_kv * self.head_size, bias=bias)
        self.c_v = nn.Linear(d, n_kv * self.head_size, bias=bias)
        self.c_proj = nn.Linear(n_head * self.head_size, d, bias=bias)
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, n_kv, bias=False) if has_ve else None

    def qkv(self, x: Tensor) -> Tensor:
        """q, k and v side by side. With autograd on (training) one matmul against the concatenated weights,
        which runs faster than three; without it (evaluation, decoding) three matmuls, which give the same
        numbers without copying the weights at every call. The weights stay separate parameters, as in the
        authors' checkpoints."""
        lins = (self.c_q, self.c_k, self.c_v)
        if not torch.is_grad_enabled() or not all(type(lin.weight) is nn.Parameter for lin in lins):
            return torch.cat([lin(x) for lin in lins], dim=-1)  # (also quantised or sharded weights)
        bias = None if self.c_q.bias is None else torch.cat([lin.bias for lin in lins])
        return F.linear(x, torch.cat([lin.weight for lin in lins]), bias)

    def forward(
        self, x: Tensor, ctx: AttnContext, ve: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv, self.head_size
        qkv = self.qkv(x).view(B, T, H + 2 * Hkv, D)
        qk, v = qkv.split([H + Hkv, Hkv], dim=2)
        if ve is not None and self.ve_gate is not None:
            gate = 2.0 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # [B, T, n_kv] in (0, 2)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, Hkv, D)
        qk = apply_rope(qk, ctx.freqs)  # q and k heads together: one rotation, one norm
        if self.qk_norm:
            qk = F.rms_norm(qk, (D,))
        q, k = qk.split([H, Hkv], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        if cache is not None:
            k, v = cache.update(ctx.input_pos, k, v, ctx.rows, ctx.kv_length)
        if T == 1 and cache is not None and torch.compiler.is_compiling():
            y = single_query_attention(q, k, v, ctx.mask)
        else:
            is_causal = ctx.mask is None and cache is None
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=ctx.mask, is_causal=is_causal, enable_gqa=self.n_head != self.n_kv
            )
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


def single_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q·kᵀ/√D)·v for one query per head, q [B, H, 1, D] over k, v [B, H_kv, L, D] (query head h
    reads kv head h // (H / H_kv), as grouped-query SDPA), masked by `mask` [B or 1, 1, 1, L]. Written as
    products and sums, a compiled decode step fuses it into one kernel, where SDPA is an opaque call."""
    B, H, _, D = q.shape
    n_kv = k.shape[1]
    scores = (q.view(B, n_kv, H // n_kv, 1, D) * k[:, :, None]).sum(-1) * D**-0.5  # [B, H_kv, G, L]
    if mask is not None:
        scores = scores.masked_fill(~mask.view(mask.shape[0], 1, 1, -1), float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return (p[..., None] * v[:, :, None]).sum(-2).view(B, H, 1, D)


class MLP(nn.Module):
    def __init__(self, d: int, hidden: int, bias: bool, act: Activation) -> None:
        super().__init__()
        self.act = act
        self.fc = nn.Linear(d, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.act == Activation.RELU2 and self.proj.bias is None:
            # ½·relu(h)² with the ½ applied after the down-projection: exactly equal (a power of two) and
            # on a tensor hidden/d times smaller, forward and backward.
            return self.proj(F.relu(h).square()) * 0.5
        return self.proj(activation(self.act, h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, d: int, hidden: int, n_head: int, n_kv: int, has_ve: bool) -> None:
        super().__init__()
        self.norm_1 = make_norm(cfg, d)
        self.attn = CausalSelfAttention(d, n_head, n_kv, cfg.bias, cfg.qk_norm, has_ve)
        self.norm_2 = make_norm(cfg, d)
        self.mlp = MLP(d, hidden, cfg.bias, cfg.nonlin_name)

    def forward(
        self, x: Tensor, ctx: AttnContext, ve: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        x = x + self.attn(self.norm_1(x), ctx, ve, cache)
        return x + self.mlp(self.norm_2(x))


def has_value_embedding(layer: int, n_layers: int) -> bool:
    """Alternate layers, always including the last: i ≡ n−1 (mod 2). One indexing for tables and gates."""
    return layer % 2 == (n_layers - 1) % 2


# --------------------------------------------------------------------------------------------------
# Initialisation (the reference's `scaled` / `scaled-zero` strategies with truncated-orthogonal draws).


@torch.no_grad()
def trunc_normal_(w: Tensor, std: float) -> Tensor:
    if std == 0:
        return w.zero_()
    return nn.init.trunc_normal_(w, mean=0.0, std=std, a=-3 * std, b=3 * std)


@torch.no_grad()
def trunc_orthogonal_(w: Tensor, std: float) -> Tensor:
    """Orthogonal matrix scaled so entries have std ≈ `std`: every singular value is std·√max(rows, cols)."""
    if std == 0:
        return w.zero_()
    rows, cols = w.shape
    a = torch.empty(max(rows, cols), min(rows, cols), dtype=torch.float32, device=w.device)
    nn.init.trunc_normal_(a, 0.0, 1.0, -2.0, 2.0)
    q, r = _qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # make the decomposition unique
    if rows < cols:
        q = q.T
    return w.copy_(q * std * math.sqrt(max(rows, cols)))


def _qr(a: Tensor) -> tuple[Tensor, Tensor]:
    """QR; small CPU matrices run single-threaded (threaded LAPACK is ~10× slower on them)."""
    if a.device.type != "cpu" or a.numel() > 4_000_000:
        return torch.linalg.qr(a)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.qr(a)
    finally:
        torch.set_num_threads(threads)


def init_matrix(w: Tensor, std: float, orthogonal: bool) -> None:
    if w.is_meta:
        return
    (trunc_orthogonal_ if orthogonal else trunc_normal_)(w, std)


def init_block(block: Block, cfg: ModelConfig, d: int, depth: int) -> None:
    """q/k/v/fc get std √(2/5d); output projections 0 (scaled-zero) or std/√(2·depth) (scaled)."""
    std = math.sqrt(2.0 / (5.0 * d))
    out_std = 0.0 if cfg.init_strategy == InitStrategy.SCALED_ZERO else std / math.sqrt(2.0 * depth)
    attn, mlp = block.attn, block.mlp
    for lin in (attn.c_q, attn.c_k, attn.c_v, mlp.fc):
        init_matrix(lin.weight, std, cfg.init_orthogonal)
    for lin in (attn.c_proj, mlp.proj):
        init_matrix(lin.weight, out_std, cfg.init_orthogonal)
    for lin in (attn.c_q, attn.c_k, attn.c_v, attn.c_proj, mlp.fc, mlp.proj):
        if lin.bias is not None and not lin.bias.is_meta:
            nn.init.zeros_(lin.bias)
    if attn.ve_gate is not None and not attn.ve_gate.weight.is_meta:
        attn.ve_gate.reset_parameters()  # the reference keeps PyTorch's default U(±1/√32) here
