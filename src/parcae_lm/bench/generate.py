"""Generation throughput: prefill and decode tok/s of cached decoding, against the FLOP limit; and
`bench_user_path`, `model.generate` as a user calls it, against the memory-bandwidth limit.

Decode at small batch is latency-bound, so alongside tokens/s we report the FLOP-limited speed: inference
FLOPs per token (`model.flops.inference_flops` at the mean decode context) ÷ the fp32 matmul peak measured in
this process. "x% of FLOP-limited" says how far the decode loop is from doing nothing but matmuls at peak.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from parcae_lm.bench.train import bench_config
from parcae_lm.checkpoint import from_pretrained
from parcae_lm.errors import ConfigError
from parcae_lm.model import FULL_CACHE, CacheStrategy, Decoder, LanguageModel, build_model
from parcae_lm.model.decode import compile_supported
from parcae_lm.model.flops import inference_flops
from parcae_lm.runtime import matmul_peak_flops, peak_memory_bytes, sync_device


@dataclass
class GenerateBenchResult:
    model: str
    params: int
    batch_size: int
    prompt_len: int
    new_tokens: int
    num_steps: int | None
    cache_strategy: str
    threads: int
    compiled: bool
    compile_seconds: float | None  # the decode step's one-time compilation (None when not compiled)
    prefill_tokens_per_second: float
    decode_tokens_per_second: float
    decode_ms_per_step: float
    end_to_end_tokens_per_second: float  # new tokens / (prefill + decode): what a generate call sees
    eager_decode_tokens_per_second: float  # the same decoder uncompiled, for comparison
    kv_cache_bytes: int
    peak_memory_mb: float
    flops_per_token: float
    peak_flops: float
    flop_limited_tokens_per_second: float
    fraction_of_flop_limit: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def bench_generate(
    model: LanguageModel,
    prompt_len: int = 256,
    new_tokens: int = 256,
    batch_size: int = 1,
    num_steps: int | None = None,
    strategy: CacheStrategy = FULL_CACHE,
    compile: bool = False,
    peak_flops: float | None = None,
    eager_tokens: int = 32,
    name: str = "model",
) -> GenerateBenchResult:
    """Time one prefill of [batch_size, prompt_len] random tokens, then `new_tokens` greedy decode steps.
    `compile` runs the decode steps through the decoder's compiled static-shape step, compiled before
    anything is timed; its compile time is reported separately."""
    cfg = model.config
    if prompt_len < 1 or new_tokens < 1 or batch_size < 1:
        raise ConfigError(
            f"prompt_len, new_tokens and batch_size must be ≥ 1, got {prompt_len}, {new_tokens}, {batch_size}"
        )
    if prompt_len + new_tokens > cfg.block_size:
        raise ConfigError(
            f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds the model's block_size={cfg.block_size}"
        )
    if not cfg.is_parcae and num_steps is not None:
        raise ConfigError("num_steps applies to Parcae models only")
    model.eval()
    device = model.device
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (batch_size, prompt_len), generator=gen).to(device)
    total = prompt_len + new_tokens
    vocab = cfg.vocab_size

    def run(dec: Decoder, tokens: int) -> tuple[float, float]:
        sync_device(device)
        t0 = time.perf_counter()
        logits = dec.prefill(prompt)
        sync_device(device)
        t1 = time.perf_counter()
        for _ in range(tokens):
            logits = dec.step(logits[:, :vocab].argmax(-1))
        sync_device(device)
        return t1 - t0, time.perf_counter() - t1

    def warmed(compiled: bool) -> Decoder:
        dec = Decoder(model, batch_size, total, num_steps, strategy, compiled=compiled)
        if compiled:
            dec.precompile()
        # Warm up (allocator, lazily built tables) on the same decoder, then rewind the cache.
        dec.prefill(prompt[:, : min(prompt_len, 16)])
        for _ in range(4):
            dec.step(prompt[:, 0])
        dec.reset()
        return dec

    dec = warmed(compile)
    prefill_s, decode_s = run(dec, new_tokens)
    eager_tokens = min(eager_tokens, new_tokens)
    eager_s = run(warmed(False), eager_tokens)[1] if compile else decode_s * eager_tokens / new_tokens

    kw = {} if num_steps is None else {"num_steps": num_steps}
    flops_tok = inference_flops(cfg, prompt_len + new_tokens // 2, **kw)
    peak = peak_flops if peak_flops is not None else matmul_peak_flops(device, seconds=2.0)
    decode_tps = batch_size * new_tokens / decode_s
    return GenerateBenchResult(
        model=name,
        params=model.num_parameters(),
        batch_size=batch_size,
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        num_steps=dec.cache.num_steps,
        cache_strategy=str(strategy),
        threads=torch.get_num_threads(),
        compiled=compile,
        compile_seconds=dec.compile_seconds,
        prefill_tokens_per_second=batch_size * prompt_len / prefill_s,
        decode_tokens_per_second=decode_tps,
        decode_ms_per_step=1000 * decode_s / new_tokens,
        end_to_end_tokens_per_second=batch_size * new_tokens / (prefill_s + decode_s),
        eager_decode_tokens_per_second=batch_size * eager_tokens / eager_s,
        kv_cache_bytes=dec.cache.memory_bytes(),
        peak_memory_mb=peak_memory_bytes(device) / 2**20,
        flops_per_token=flops_tok,
        peak_flops=peak,
        flop_limited_tokens_per_second=peak / flops_tok,
        fraction_of_flop_limit=decode_tps * flops_tok / peak,
    )


def format_table(results: list[GenerateBenchResult]) -> str:
    head = (
        f"{'batch':>5} {'prefill tok/s':>13} {'decode tok/s':>12} {'ms/step':>8} {'end-to-end':>10} {'eager tok/s':>11} "
        f"{'KV MiB':>7} {'peak MiB':>8} {'FLOP-limit tok/s':>16} {'of limit':>8}"
    )
    lines = [head]
    for r in results:
        lines.append(
            f"{r.batch_size:>5} {r.prefill_tokens_per_second:>13.0f} {r.decode_tokens_per_second:>12.1f} "
            f"{r.decode_ms_per_step:>8.2f} {r.end_to_end_tokens_per_second:>10.1f} {r.eager_decode_tokens_per_second:>11.1f} "
            f"{r.kv_cache_bytes / 2**20:>7.1f} {r.peak_memory_mb:>8.0f} {r.flop_limited_tokens_per_second:>16.0f} "
            f"{r.fraction_of_flop_limit:>8.1%}"
        )
    return "\n".join(lines)


def load_model_or_default(path: str | None, device: str = "cpu") -> tuple[LanguageModel, str]:
    """A saved model directory, or (None) a random init of the bench config with block_size 512."""
    if path is not None:
        return from_pretrained(path, device=device), path
    torch.manual_seed(0)
    cfg = bench_config(block_size=512)
    return build_model(cfg).to(device).eval(), f"{cfg.name} (random init, bench config)"


def weight_bytes_per_token(model: LanguageModel) -> int:
    """Bytes of weight matrices one decode step at batch 1 must read at least once: every Linear's weight
    (the tied head counted once, as the unembedding it is). Embedding tables are looked up one row at a
    time and left out. Dividing the memory bandwidth by this bounds tokens/s from above."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel() * module.weight.element_size()
    return total


@dataclass
class UserPathResult:
    """`model.generate` as a user calls it (prefill included), timed over repeated calls."""

    prompt_len: int
    new_tokens: int
    first_call_seconds: float  # the first call in this process (eager: nothing compiled yet)
    warmup_calls: int  # calls until generate's default path had compiled its decoder
    warmup_seconds: float  # their total time, compile included
    seconds: list[float]  # the timed calls after warm-up, default settings
    tokens_per_second: float  # new tokens / median call time

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def bench_user_path(
    model: LanguageModel,
    prompt: torch.Tensor,
    new_tokens: int,
    reps: int = 5,
    between: Callable[[], None] | None = None,
) -> UserPathResult:
    """Time `model.generate(prompt, new_tokens, temperature=0)` with its default settings: first call, the
    calls it takes until the default has switched to the compiled step, then `reps` timed calls
    (`between` runs after each, e.g. a comparison's other side, so the two alternate)."""
    from parcae_lm.model.decode import compiled_decoders

    def call() -> float:
        sync_device(model.device)
        t0 = time.perf_counter()
        model.generate(prompt, new_tokens, temperature=0)
        sync_device(model.device)
        return time.perf_counter() - t0

    first = call()
    t0, calls = time.perf_counter(), 0
    while not compiled_decoders(model) and calls < 1000 and compile_supported(model.device):
        call()
        calls += 1
    warm = time.perf_counter() - t0
    seconds = []
    for _ in range(reps):
        seconds.append(call())
        if between is not None:
            between()
    median = sorted(seconds)[len(seconds) // 2]
    return UserPathResult(
        prompt_len=prompt.shape[-1],
        new_tokens=new_tokens,
        first_call_seconds=first,
        warmup_calls=calls,
        warmup_seconds=warm,
        seconds=seconds,
        tokens_per_second=prompt.shape[0] * new_tokens / median,
    )
