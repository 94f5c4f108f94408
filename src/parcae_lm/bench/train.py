"""Training throughput: tokens/s of a plain forward+backward loop, MFU against the matmul peak measured in
the same process, peak memory.

MFU = (model FLOPs per token × tokens/s) ÷ peak, where the peak is the best fp32 (CPU) or bf16 (CUDA)
matmul throughput measured here on square matrices right after each timed step; model FLOPs follow
`parcae_lm.model.flops` with the depths actually run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from parcae_lm.config import ModelConfig, ParcaeConfig, SamplingScheme, create_config
from parcae_lm.model import build_model
from parcae_lm.model.flops import training_flops
from parcae_lm.model.recurrence import TrainDraw, sample_depths
from parcae_lm.runtime import matmul_peak_flops, peak_memory_bytes, sync_device


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
    """Time forward+backward steps on random tokens (no optimizer step: this measures the model), the plain
    loop a library user writes: `model(x, labels=y)["loss"].backward()`."""
    dev = torch.device(device)
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
    base = dict(vocab_size=32768, block_size=256, mean_recurrence=4, mean_backprop_depth=2)
    base["sampling_scheme"] = SamplingScheme.FIXED
    base.update(overrides)
    return create_config(name, **base)
