"""The process a run trains in: seeds, CPU threads, matmul precision and the autocast context."""

from __future__ import annotations

import random
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from parcae_lm.config.train import Precision, SystemArgs
from parcae_lm.runtime import matmul_peak_flops


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure(system: SystemArgs, device: torch.device) -> None:
    """Threads as configured and TF32 matmuls on CUDA (the fp32 master weights stay fp32)."""
    if system.threads is not None:
        torch.set_num_threads(system.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_context(precision: Precision, device: torch.device) -> AbstractContextManager:
    use_bf16 = precision == Precision.bf16 or (precision == Precision.auto and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def pick_cpu_threads() -> tuple[int, float]:
    """Use the thread count (1..torch's default) with the fastest fp32 matmul; returns (threads, its FLOP/s).

    On a machine shared with other jobs, fewer threads than cores can be much faster (no spinning at
    barriers behind descheduled threads); on an idle one all cores win. The benchmark decides."""
    max_threads = torch.get_num_threads()
    best = (max_threads, 0.0)
    for n in range(1, max_threads + 1):
        torch.set_num_threads(n)
        flops = matmul_peak_flops("cpu", size=512, seconds=0.25)
        if flops > best[1]:
            best = (n, flops)
    torch.set_num_threads(best[0])
    return best
