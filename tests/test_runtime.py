"""Process-level CPU settings: a training step stops page-faulting its large activations back in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from parcae_lm.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # applies, and is idempotent
import parcae_lm
model = parcae_lm.create_model("parcae-micro", vocab_size=32768, init_strategy="scaled").train()
x = torch.randint(0, 32768, (4, 64))  # [256, 32768] fp32 logits: 32 MiB, above glibc's mmap threshold
def faults_per_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model.zero_grad(set_to_none=True)
    model(x, labels=x)["loss"].backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_per_step(); faults_per_step()  # warm-up
print(min(faults_per_step() for _ in range(3)))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-specific")
def test_keep_freed_memory_stops_per_step_page_faults():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    assert faults("default") > 8192  # ≥ 32 MiB of fresh pages every step
    assert faults("keep") < 100  # freed blocks are reused from the heap
