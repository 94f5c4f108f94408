"""Throughput benchmarks: tokens/s, MFU against the matmul peak measured in the same process, peak memory.

MFU = (model FLOPs per token × tokens/s) ÷ peak, where the peak is the best fp32 (CPU) or bf16 (CUDA)
matmul throughput measured here on square matrices right after each timed step; model FLOPs follow
`parcae_lm.flops` with the depths actually run.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from parcae_lm.config import ModelConfig, ParcaeConfig, SamplingScheme
from parcae_lm.flops import training_flops
from parcae_lm.model import build_model
from parcae_lm.model.recurrence import TrainDraw, sample_depths
from parcae_lm.runtime import keep_freed_memory


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


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@dataclass
class TrainBenchResult:
    config: str
    params: int
    batch_size: int
    seq_len: int
    threads: int
    tokens_per_second: float
    seconds_per_step: float
    flops_per_token: float
    achieved_flops: float
    peak_flops: float
    mfu: float
    core_passes_per_step: float
    peak_memory_mb: float

    def to_dict(self) -> dict:
        return asdict(self)


def bench_training(
    cfg: ModelConfig,
    batch_size: int = 4,
    seq_len: int = 256,
    warmup: int = 2,
    steps: int = 6,
    device: str = "cpu",
    compile: bool = False,
    fused_loss: bool = True,
    activation_checkpointing: bool = False,
) -> TrainBenchResult:
    """Time forward+backward steps on random tokens (no optimizer step: this measures the model).

    On CPU this applies `runtime.keep_freed_memory()` to the process, as the `parcae` CLI does."""
    dev = torch.device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(0)
    model = build_model(cfg).to(dev).train()
    model.activation_checkpointing = activation_checkpointing
    if compile:
        model.compile_blocks()  # per block: the loop's depth and active rows vary, the blocks don't
    x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=dev)
    y = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=dev)
    autocast = (
        torch.autocast("cuda", torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    )

    def step(i: int) -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            # return_logits=True takes the plain head: full [tokens, vocab] fp32 logits, then cross-entropy.
            loss = model(x, labels=y, return_logits=not fused_loss, draw=TrainDraw(step=i))["loss"]
        loss.backward()

    for i in range(warmup):
        step(i)
    # This machine's matmul throughput itself drifts (shared hosts, clocks), so each timed step is paired
    # with a short peak measurement taken right after it, and MFU is the median of the per-step ratios.
    times, peaks = [], []
    for i in range(steps):
        sync_device(dev)
        t0 = time.perf_counter()
        step(1000 + i)
        sync_device(dev)
        times.append(time.perf_counter() - t0)
        peaks.append(matmul_peak_flops(dev, seconds=0.25))

    tokens = batch_size * seq_len
    # Per-step accounting, outside the timed region: the depths each step ran are reproducible from its seed.
    accounts = [_step_accounting(cfg, 1000 + i, batch_size, seq_len) for i in range(steps)]
    flops_tok = [f for f, _ in accounts]
    mean_flops_tok = statistics.fmean(flops_tok)
    dt = statistics.median(times)
    return TrainBenchResult(
        config=cfg.name,
        params=model.num_parameters(),
        batch_size=batch_size,
        seq_len=seq_len,
        threads=torch.get_num_threads(),
        tokens_per_second=tokens / dt,
        seconds_per_step=dt,
        flops_per_token=mean_flops_tok,
        achieved_flops=mean_flops_tok * tokens / dt,
        peak_flops=statistics.median(peaks),
        mfu=statistics.median(f * tokens / (t * p) for f, t, p in zip(flops_tok, times, peaks)),
        core_passes_per_step=statistics.fmean(p for _, p in accounts),
        peak_memory_mb=peak_memory_bytes(dev) / 2**20,
    )


def _step_accounting(cfg: ModelConfig, step: int, batch_size: int, seq_len: int) -> tuple[float, float]:
    """(model FLOPs per token, core-block passes) of one step at the depths it actually ran. Passes are in
    units of full-batch passes (Σ rows run / batch size); FLOPs use the depths' batch means."""
    if not isinstance(cfg, ParcaeConfig):
        return training_flops(cfg, seq_len).per_token, 0.0
    d = sample_depths(cfg, step, batch_size, seq_len, seed=cfg.state_init_seed)
    flops = training_flops(cfg, seq_len, d.n.float().mean().item(), d.k.float().mean().item()).per_token
    total = d.n + d.k
    if total.dim() == 2:  # per-token depths: a row runs until its deepest token is done
        total = d.n.amax(1) + d.k.amax(1)
    passes = float(total.float().sum() / batch_size) if total.dim() else float(total)
    return flops, passes


def bench_config(name: str = "parcae-tiny", **overrides) -> ParcaeConfig:
    """The model-library benchmark: d=256, 4 heads, I=1024, 2/2/2, vocab 32768, seq 256, recurrence 4
    fixed with 2 backprop steps."""
    from parcae_lm.config import create_config

    base = dict(vocab_size=32768, block_size=256, mean_recurrence=4, mean_backprop_depth=2)
    base["sampling_scheme"] = SamplingScheme.FIXED
    base.update(overrides)
    return create_config(name, **base)
