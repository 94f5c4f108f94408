"""Process-level CPU settings: a plain training loop stops page-faulting its large activations back in,
because building a model applies the allocator tuning (no call needed from the user)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from parcae_lm.errors import ConfigError
from parcae_lm.runtime import resolve_device

SCRIPT = """
import resource, torch
import parcae_lm
from parcae_lm.runtime import keep_freed_memory
model = parcae_lm.create_model("parcae-micro", vocab_size=32768, init_strategy="scaled").train()
x = torch.randint(0, 32768, (4, 64))  # [256, 32768] fp32 logits: 32 MiB, above glibc's mmap threshold
def faults_per_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model.zero_grad(set_to_none=True)
    model(x, labels=x)["loss"].backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_per_step(); faults_per_step()  # warm-up
print(min(faults_per_step() for _ in range(3)), keep_freed_memory())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-specific")
def test_a_plain_training_loop_stops_per_step_page_faults():
    def run(setting: str) -> tuple[int, str]:
        env = {**os.environ, "PARCAE_KEEP_FREED_MEMORY": setting}
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, env=env
        )
        faults, applied = out.stdout.split()
        return int(faults), applied

    faults, applied = run("0")  # the opt-out
    assert applied == "False" and faults > 8192  # ≥ 32 MiB of fresh pages every step
    faults, applied = run("1")
    assert applied == "True" and faults < 100  # freed blocks are reused from the heap


def test_resolve_device_picks_and_checks_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for name, message in [
        ("cuda", "CUDA is not available"),
        ("mps", "MPS is not available"),
        ("gpu", "unknown device 'gpu'; expected auto, cpu, cuda, cuda:N or mps"),
        ("meta", "unsupported device 'meta'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_device(name)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")  # cuda first, then mps
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="2 CUDA device"):
        resolve_device("cuda:2")
