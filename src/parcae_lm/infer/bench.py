"""`parcae bench generate`: prefill and decode throughput of cached generation, against the FLOP limit.

Decode at small batch is latency-bound, so alongside tokens/s we report the FLOP-limited speed: inference
FLOPs per token (`flops.inference_flops` at the mean decode context) ÷ the fp32 matmul peak measured in
this process. "x% of FLOP-limited" says how far the decode loop is from doing nothing but matmuls at peak.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import torch

from parcae_lm.bench import matmul_peak_flops, peak_memory_bytes, sync_device
from parcae_lm.errors import ConfigError
from parcae_lm.flops import inference_flops
from parcae_lm.infer.engine import Engine
from parcae_lm.infer.kv_cache import FULL_CACHE, CacheStrategy, KVCache
from parcae_lm.model import LanguageModel, build_model


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
    eager_decode_tokens_per_second: float  # the model's own forward with the same cache, for comparison
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
    `compile` runs the decode steps through the engine's compiled static-shape step (`StaticDecode`),
    compiled before anything is timed; its compile time is reported separately."""
    cfg = model.config
    if prompt_len < 1 or new_tokens < 1:
        raise ConfigError(f"prompt_len and new_tokens must be ≥ 1, got {prompt_len}, {new_tokens}")
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

    def run(engine: Engine) -> tuple[float, float]:
        sync_device(device)
        t0 = time.perf_counter()
        logits = engine.prefill(prompt)
        sync_device(device)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            logits = engine.step(logits[:, :vocab].argmax(-1))
        sync_device(device)
        return t1 - t0, time.perf_counter() - t1

    engine = Engine(model, batch_size, total, num_steps, strategy, compiled=compile)
    compile_s = engine.precompile() if compile else None
    # Warm up (allocator, caches) on the same engine, then rewind the cache.
    engine.prefill(prompt[:, : min(prompt_len, 16)])
    for _ in range(4):
        engine.step(prompt[:, 0])
    engine.reset()
    prefill_s, decode_s = run(engine)
    eager_tps = _eager_decode(model, prompt, min(eager_tokens, new_tokens), num_steps, strategy)

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
        num_steps=engine.num_steps,
        cache_strategy=str(strategy),
        threads=torch.get_num_threads(),
        compiled=compile,
        compile_seconds=compile_s,
        prefill_tokens_per_second=batch_size * prompt_len / prefill_s,
        decode_tokens_per_second=decode_tps,
        decode_ms_per_step=1000 * decode_s / new_tokens,
        eager_decode_tokens_per_second=eager_tps,
        kv_cache_bytes=engine.cache.memory_bytes(),
        peak_memory_mb=peak_memory_bytes(device) / 2**20,
        flops_per_token=flops_tok,
        peak_flops=peak,
        flop_limited_tokens_per_second=peak / flops_tok,
        fraction_of_flop_limit=decode_tps * flops_tok / peak,
    )


def _eager_decode(
    model: LanguageModel, prompt: torch.Tensor, tokens: int, num_steps: int | None, strategy: CacheStrategy
) -> float:
    """Decode tok/s through `model(...)` with the same cache: what the engine is measured against."""
    B, T = prompt.shape
    kw = {} if num_steps is None else {"num_steps": num_steps}
    cache = KVCache(model, B, T + tokens, strategy=strategy, **kw)
    logits = model(prompt, kv_cache=cache)["logits"][:, -1]
    token = logits.argmax(-1)
    sync_device(prompt.device)
    t0 = time.perf_counter()
    for _ in range(tokens):
        token = model(token[:, None], kv_cache=cache)["logits"][:, -1].argmax(-1)
    sync_device(prompt.device)
    return B * tokens / (time.perf_counter() - t0)


def format_table(results: list[GenerateBenchResult]) -> str:
    head = (
        f"{'batch':>5} {'prefill tok/s':>13} {'decode tok/s':>12} {'ms/step':>8} {'eager tok/s':>11} "
        f"{'KV MiB':>7} {'peak MiB':>8} {'FLOP-limit tok/s':>16} {'of limit':>8}"
    )
    lines = [head]
    for r in results:
        lines.append(
            f"{r.batch_size:>5} {r.prefill_tokens_per_second:>13.0f} {r.decode_tokens_per_second:>12.1f} "
            f"{r.decode_ms_per_step:>8.2f} {r.eager_decode_tokens_per_second:>11.1f} "
            f"{r.kv_cache_bytes / 2**20:>7.1f} {r.peak_memory_mb:>8.0f} {r.flop_limited_tokens_per_second:>16.0f} "
            f"{r.fraction_of_flop_limit:>8.1%}"
        )
    return "\n".join(lines)


def load_model_or_default(path: str | None, device: str = "cpu") -> tuple[LanguageModel, str]:
    """A saved model directory, or (None) a random init of the bench config with block_size 512."""
    if path is not None:
        from parcae_lm.checkpoint import from_pretrained

        return from_pretrained(path, device=device), path
    from parcae_lm.bench import bench_config

    torch.manual_seed(0)
    cfg = bench_config(block_size=512)
    return build_model(cfg).to(device).eval(), f"{cfg.name} (random init, bench config)"


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--batch-sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"--batch-sizes must be positive integers, got {text!r}")
    return sizes


def cmd_bench_generate(args) -> int:
    from parcae_lm.files import atomic_write_text

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be ≥ 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    sizes = parse_batch_sizes(args.batch_sizes)
    strategy = CacheStrategy.parse(args.cache)
    model, name = load_model_or_default(args.model, args.device)
    peak = matmul_peak_flops(model.device, seconds=2.0)
    results = [
        bench_generate(
            model,
            args.prompt_len,
            args.new_tokens,
            b,
            args.num_steps,
            strategy,
            args.compile,
            peak_flops=peak,
            name=name,
        )
        for b in sizes
    ]
    r0 = results[0]
    print(
        f"{name}: {r0.params / 1e6:.2f}M params, prompt {args.prompt_len} + {args.new_tokens} new tokens, "
        f"recurrence {r0.num_steps}, cache {r0.cache_strategy}, {r0.threads} threads"
        f"{', compiled' if args.compile else ''}; matmul peak {peak / 1e9:.1f} GFLOP/s, "
        f"{r0.flops_per_token / 1e6:.1f} MFLOP/token"
    )
    print(format_table(results))
    for r in results:
        if r.compile_seconds is not None:
            print(f"batch {r.batch_size}: decode step compiled in {r.compile_seconds:.1f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
