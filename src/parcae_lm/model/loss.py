"""Cross-entropy through the tied head without materialising the full [tokens, vocab] fp32 logits.

Rows are processed in chunks: each chunk's logits are computed, turned into its loss and — when
gradients are needed — straight into the gradients of the hidden states and the head weight, then
dropped. Peak memory is chunk × vocab instead of tokens × vocab, the FLOPs are the same as the plain
path (no recomputation: the backward pass only scales the stored gradients), and on CPU the chunks stay
in cache, which makes it faster too.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, labels: Tensor, chunk: int, softcap: float | None) -> Tensor:
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(x.dtype)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if needs_grad else None
        grad_w = None
        for start in range(0, x.shape[0], chunk):
            xs, ys = x[start : start + chunk], labels[start : start + chunk]
            logits = (xs @ w.T).float()
            if softcap is not None:
                t = torch.tanh(logits / softcap)
                logits = softcap * t
            valid = ys != IGNORE_INDEX
            safe = torch.where(valid, ys, 0)
            logp = torch.log_softmax(logits, dim=-1)  # one fused kernel; its exp is the softmax below
            total -= (logp.gather(1, safe[:, None]).squeeze(1) * valid).sum()
            if needs_grad:
                g = logp.exp_()  # softmax, in place
                g[torch.arange(len(ys), device=x.device), safe] -= 1.0
                g *= valid[:, None]
                if softcap is not None:
                    g *= 1.0 - t.square()
                g = g.to(x.dtype)
                grad_x[start : start + chunk] = g @ w
                part = (g.T @ xs).float()
                grad_w = part if grad_w is None else grad_w.add_(part)
        if needs_grad:
            grad_w = torch.zeros_like(weight) if grad_w is None else grad_w.to(weight.dtype)
            ctx.save_for_backward(grad_x, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_out.to(grad_x.dtype), grad_w * grad_out.to(grad_w.dtype), None, None, None


def linear_cross_entropy_sum(
    x: Tensor, weight: Tensor, labels: Tensor, chunk: int = 256, softcap: float | None = None
) -> Tensor:
    """Σ over labelled rows of CE(softcap(x @ weightᵀ), label); x [N, d], weight [V, d], labels [N]."""
    return _ChunkedLinearCrossEntropy.apply(x, weight, labels, chunk, softcap)
