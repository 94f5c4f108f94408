"""Process-level CPU tuning that the `parcae` CLI applies once at start-up.

glibc's malloc serves large blocks (the 32 MiB head chunks, the [tokens, 4·d] MLP activations) with
fresh `mmap`s and unmaps them on free, so every training step page-faults its activations back in: on
the model-library benchmark that is ~25% of the step (measured: 0.89 → 0.66 s/step on 2 threads).
Raising the mmap and trim thresholds makes freed blocks stay in the heap and be reused. The cost is that
the process keeps its peak footprint instead of returning memory to the OS between steps, which is what a
training or benchmark process wants anyway. Library users can call `keep_freed_memory()` themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1  # mallopt parameter ids from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_LIMIT = 2**31 - 1  # mallopt takes an int

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc malloc keep and reuse freed large blocks (no-op off glibc). Returns whether it applied."""
    global _applied
    if _applied:
        return True
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
