"""Cross-entropy through the tied head without materialising the full [tokens, vocab] fp32 logits.

Rows are processed in chunks: each chunk's logits are computed, turned into its loss and — when
gradients are needed — straight into the gradients of the hidden states and the head weight, then
dropped. Peak memory is chunk × vocab instead of tokens × vocab (the softmax overwrites the chunk's
logits) and the FLOPs are the same as the plain path (no recomputation). The gradients already carry the
1/(labelled tokens) of the mean, so for the usual `loss.backward()` (upstream gradient exactly 1) the
backward pass has nothing left to do.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100
# Logits held per chunk by default: 128 MiB in fp32, 1024 rows at a 32768 vocabulary. Larger chunks run the
# head's matmuls faster on CPU (M=1024 vs 256: ~10% on the benchmark model); smaller ones save memory.
CHUNK_LOGITS = 2**25


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, labels: Tensor, chunk: int, softcap: float | None) -> Tensor:
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        w = weight.to(x.dtype)
        valid = labels != IGNORE_INDEX
        safe = torch.where(valid, labels, 0)
        inv_count = 1.0 / valid.sum().clamp_min(1).float()
        row_scale = valid * inv_count  # mean over labelled rows, 0 for ignored ones
        logits_buf = torch.empty(min(chunk, x.shape[0]), w.shape[0], dtype=x.dtype, device=x.device)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if needs_grad else None
        # The weight gradient accumulates in fp32 across chunks: the first chunk writes it, the rest add
        # in place (fp32 inputs straight into the matmul, lower precisions through an fp32 copy).
        grad_w = torch.empty(w.shape, dtype=torch.float32, device=x.device) if needs_grad else None
        for start in range(0, x.shape[0], chunk):
            xs, ys = x[start : start + chunk], safe[start : start + chunk]
            scale = row_scale[start : start + chunk]
            logits = torch.mm(xs, w.T, out=logits_buf[: len(xs)]).float()
            if softcap is not None:
                t = torch.tanh(logits / softcap)
                logits = softcap * t
            picked = logits.gather(1, ys[:, None]).squeeze(1)
            if not needs_grad:
                total += ((torch.logsumexp(logits, dim=-1) - picked) * scale).sum()
                continue
            # The softmax is the gradient. It is written over the chunk's own logits (a buffer or a fresh
            # fp32 tensor; softmax kernels finish a row's reductions before writing it, so aliasing is
            # safe): one read and one write of [rows, vocab] instead of log_softmax + exp + scale passes.
            p = torch.ops.aten._softmax.out(logits, -1, False, out=logits)
            nll = -p.gather(1, ys[:, None]).squeeze(1).log()
            under = torch.isinf(nll)  # label probability below fp32's range: recompute those rows exactly
            if under.any():  # (a host sync per chunk on accelerators; the loss stays exact)
                with torch.autocast(x.device.type, enabled=False):  # fp32 even inside a bf16 region
                    redo = xs[under].float() @ w.float().T
                if softcap is not None:
                    redo = softcap * torch.tanh(redo / softcap)
                nll[under] = torch.logsumexp(redo, dim=-1) - picked[under]
            total += (nll * scale).sum()
            p[torch.arange(len(ys), device=x.device), ys] -= 1.0
            if softcap is not None:
                p *= 1.0 - t.square()
            g = p.to(x.dtype)
            # The per-row 1/count goes on the narrow operands ([rows, d]) instead of the [rows, vocab] g.
            row = scale[:, None].to(x.dtype)
            torch.mm(g, w, out=grad_x[start : start + chunk]).mul_(row)
            xs_scaled = xs * row
            if g.dtype != grad_w.dtype:
                part = (g.T @ xs_scaled).float()
                grad_w.copy_(part) if start == 0 else grad_w.add_(part)
            elif start == 0:
                torch.mm(g.T, xs_scaled, out=grad_w)
            else:
                grad_w.addmm_(g.T, xs_scaled)
        if needs_grad:
            ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_x, grad_w = ctx.saved_tensors
        # On CPU checking for the common upstream gradient of exactly 1 is free and skips two passes
        # over the [vocab, d] gradient; on accelerators the check would be a host sync, so just scale.
        if not (grad_out.device.type == "cpu" and grad_out.item() == 1.0):
            grad_x = grad_x * grad_out.to(grad_x.dtype)
            grad_w = grad_w * grad_out.to(grad_w.dtype)
        return grad_x, grad_w, None, None, None


def linear_cross_entropy(
    x: Tensor, weight: Tensor, labels: Tensor, chunk: int | None = None, softcap: float | None = None
) -> Tensor:
    """Mean over labelled rows of CE(softcap(x @ weightᵀ), label); x [N, d], weight [V, d], labels [N].

    Rows labelled IGNORE_INDEX count for nothing; with no labelled row the loss is 0. `chunk` rows are
    processed at a time (default: as many as fit CHUNK_LOGITS elements of logits).
    """
    if chunk is None:
        chunk = max(1, CHUNK_LOGITS // weight.shape[0])
    return _ChunkedLinearCrossEntropy.apply(x, weight, labels, chunk, softcap)
