"""Process-level settings and measurements of the machine: the device to run on, CPU allocator tuning, the
matmul peak that MFU is measured against, the memory bandwidth that bounds decoding, device
synchronisation and peak memory.

`keep_freed_memory`, applied once per process when the first model is built:

glibc's malloc serves large blocks (the 32 MiB head chunks, the [tokens, 4·d] MLP activations) with
fresh `mmap`s and unmaps them on free, so every training step page-faults its activations back in: on
the model-library benchmark that is ~25% of the step (measured: 0.89 → 0.66 s/step on 2 threads).
Raising the mmap and trim thresholds makes freed blocks stay in the heap and be reused. The cost is that
the process keeps its peak footprint instead of returning memory to the OS between steps, which is what a
training or benchmark process wants anyway. Set PARCAE_KEEP_FREED_MEMORY=0 to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource
import time

import torch

from parcae_lm.errors import ConfigError

_M_TRIM_THRESHOLD = -1  # mallopt parameter ids from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_LIMIT = 2**31 - 1  # mallopt takes an int

_applied = False


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is cuda if available, then mps, then cpu; an explicit device must exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; expected {DEVICES}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r}: CUDA is not available here (use --device cpu or auto)")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device {name!r}: there are {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r}: MPS is not available here (use --device cpu or auto)")
        return device
    raise ConfigError(f"unsupported device {name!r}; expected {DEVICES}")


def keep_freed_memory() -> bool:
    """Make glibc malloc keep and reuse freed large blocks (no-op off glibc). Returns whether it applied."""
    global _applied
    if _applied:
        return True
    if os.environ.get("PARCAE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_LIMIT)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(_LIMIT)) == 1 and ok
    except (OSError, AttributeError):
        return False
    _applied = ok
    return ok


def matmul_peak_flops(device: str | torch.device = "cpu", size: int = 2048, seconds: float = 1.0) -> float:
    """Best sustained FLOP/s of an n×n matmul (fp32 on CPU, bf16 on CUDA), over ~`seconds`."""
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    c = torch.empty(size, size, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    for _ in range(2):
        torch.mm(a, b, out=c)  # warm up
    while best == 0.0 or time.perf_counter() < deadline:  # at least one timed matmul, even on a busy machine
        sync_device(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        sync_device(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - t0))
    return best


def memory_bandwidth(device: str | torch.device = "cpu", megabytes: int = 512, seconds: float = 1.0) -> float:
    """Best sustained read bandwidth in bytes/s: summing a buffer far larger than the caches, over ~`seconds`.
    The limit a decode step at batch 1 runs into: it reads every weight matrix at least once per token."""
    device = torch.device(device)
    x = torch.ones(megabytes * 2**20 // 4, device=device)
    best, deadline = 0.0, time.perf_counter() + seconds
    x.sum()  # warm up (page faults)
    while best == 0.0 or time.perf_counter() < deadline:
        sync_device(device)
        t0 = time.perf_counter()
        x.sum()
        sync_device(device)
        best = max(best, x.numel() * 4 / (time.perf_counter() - t0))
    return best


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated memory on CUDA; the memory Metal holds for the process on MPS (it keeps no peak);
    the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if device.type == "mps":
        return torch.mps.driver_allocated_memory()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
