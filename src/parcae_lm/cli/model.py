"""`parcae info`, `parcae generate`, `parcae bench train`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from parcae_lm.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameter counts, unrolled depth and FLOPs/token of a config or model")
    p.add_argument("model", help="a config name (e.g. parcae-small-140m) or a model/run directory")
    p.add_argument(
        "--seq-len", type=int, default=None, help="context for attention FLOPs (default block_size)"
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="sample text from a trained model (streams to stdout)")
    p.add_argument("model", help="a run directory or save_pretrained directory")
    p.add_argument("prompt", nargs="?", default="", help="prompt text (default: start from BOS)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument(
        "--num-steps", type=int, default=None, help="test-time recurrence (default mean_recurrence)"
    )
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, generated as one batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default MODEL/tokenizer)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--compile",
        action="store_true",
        help="decode through one static-shape compiled step (full cache only)",
    )
    p.set_defaults(func=cmd_generate)

    bench = sub.add_parser("bench", help="throughput benchmarks").add_subparsers(dest="bench", metavar="WHAT")
    p = bench.add_parser("train", help="forward+backward tok/s, MFU vs measured matmul peak, peak memory")
    p.add_argument("--config", default=None, help="config name (default: the model-library bench config)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile every block (inductor)")
    p.add_argument(
        "--plain-loss", action="store_true", help="materialise full logits instead of the chunked fused head"
    )
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute each grad iteration")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.set_defaults(func=cmd_bench_train)

    p = bench.add_parser(
        "generate", help="prefill/decode tok/s, FLOP limit and peak memory of cached generation"
    )
    p.add_argument(
        "model", nargs="?", default=None, help="model/run directory (default: random bench config)"
    )
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument(
        "--num-steps", type=int, default=None, help="test-time recurrence (default mean_recurrence)"
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--compile", action="store_true", help="one static-shape compiled decode step (full cache only)"
    )
    p.add_argument("--cache", default="full", help="KV cache strategy: full, last, first-last, ring-N")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench_generate)


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE pairs; values are parsed as JSON when possible (numbers, true/false, null), else strings."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _load_config(name: str, overrides: dict):
    from parcae_lm.checkpoint import load_config
    from parcae_lm.config import create_config

    if Path(name).is_dir():
        cfg = load_config(name)
        return cfg.replace(**overrides) if overrides else cfg
    return create_config(name, **overrides)


def cmd_info(args) -> int:
    from parcae_lm.config import ParcaeConfig
    from parcae_lm.model.flops import inference_flops, training_flops

    cfg = _load_config(args.model, parse_overrides(args.set))
    br = training_flops(cfg, args.seq_len)
    c = br.params
    rows = [
        ("config", cfg.name or args.model),
        ("class", type(cfg).__name__),
        ("parameters (total, unique)", f"{c.total:,}"),
        ("non-embedding (excl. wte, value embeds)", f"{c.non_embedding:,}"),
        ("embedding (wte + value embeds)", f"{c.embedding:,}"),
    ]
    if isinstance(cfg, ParcaeConfig):
        rows += [
            ("core (recurrent block)", f"{c.core:,}"),
            (
                "layers prelude/core/coda",
                f"{cfg.n_layers_in_prelude}/{cfg.n_layers_in_recurrent_block}/{cfg.n_layers_in_coda}",
            ),
            ("mean recurrence / backprop depth", f"{cfg.mean_recurrence} / {cfg.mean_backprop_depth}"),
            ("sampling", f"{cfg.sampling_scheme} ({cfg.recurrent_iteration_method})"),
            ("E[no-grad steps], E[grad steps]", f"{br.no_grad_steps:.3f}, {br.grad_steps:.3f}"),
            ("unrolled depth at the mean", str(cfg.effective_depth)),
        ]
    else:
        rows.append(("layers", str(cfg.n_layer)))
    rows += [
        ("context (attention FLOPs)", str(br.seq_len)),
        ("training FLOPs/token", f"{br.per_token:.4g}"),
        ("inference FLOPs/token", f"{inference_flops(cfg, args.seq_len):.4g}"),
    ]
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "flops": br.to_dict()}, indent=2, default=str))
    else:
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_generate(args) -> int:
    import torch

    from parcae_lm.checkpoint import load_run

    if args.num_samples < 1:
        raise ConfigError("--num-samples must be ≥ 1")
    run = load_run(args.model, device=args.device, tokenizer=args.tokenizer)
    model, tok = run.model, run.tokenizer
    ids = [tok.bos_id, *tok.encode(args.prompt)]
    prompt = torch.tensor([ids] * args.num_samples, device=args.device)
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    stream = args.num_samples == 1
    emitted: list[int] = []
    printed = ""

    def on_token(token) -> None:
        nonlocal printed
        emitted.append(int(token[0]))
        text = tok.decode(emitted)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed) :])
            sys.stdout.flush()
            printed = text

    if len(ids) + args.max_new_tokens > model.config.block_size:
        raise ConfigError(
            f"prompt ({len(ids)} tokens with BOS) + --max-new-tokens {args.max_new_tokens} exceeds the model's "
            f"context of {model.config.block_size} tokens"
        )
    if stream:
        sys.stdout.write(args.prompt)
    out = model.generate(
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_steps=args.num_steps,
        generator=g,
        eos_id=tok.eos_id,
        on_token=on_token if stream else None,
        compiled=args.compile,
    )
    if stream:
        sys.stdout.write("\n")
    else:
        for i, row in enumerate(out.tolist()):
            print(f"--- sample {i + 1} ---\n{args.prompt}{tok.decode(row[len(ids) :])}")
    return 0


def cmd_bench_generate(args) -> int:
    import torch

    from parcae_lm.bench.generate import (
        bench_generate,
        format_table,
        load_model_or_default,
        parse_batch_sizes,
    )
    from parcae_lm.files import atomic_write_text
    from parcae_lm.model import CacheStrategy
    from parcae_lm.runtime import matmul_peak_flops

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
        atomic_write_text(Path(args.json), json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_bench_train(args) -> int:
    import torch

    from parcae_lm.bench.train import bench_config, bench_training
    from parcae_lm.config import create_config

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    cfg = bench_config(**overrides) if args.config is None else create_config(args.config, **overrides)
    r = bench_training(
        cfg,
        args.batch_size,
        args.seq_len,
        args.warmup,
        args.steps,
        args.device,
        args.compile,
        not args.plain_loss,
    )
    print(
        f"config        {r.config} ({r.params:,} params), batch {r.batch_size} × seq {r.seq_len}, {r.threads} threads"
    )
    print(f"throughput    {r.tokens_per_second:,.0f} tok/s fwd+bwd ({r.seconds_per_step:.3f} s/step)")
    print(f"core passes   {r.core_passes_per_step:.2f} per step")
    print(f"model FLOPs   {r.flops_per_token / 1e6:.1f} MFLOP/token → {r.achieved_flops / 1e9:.1f} GFLOP/s")
    print(f"matmul peak   {r.peak_flops / 1e9:.1f} GFLOP/s (median, measured after each step)")
    print(f"MFU           {100 * r.mfu:.1f}% (median of per-step ratios)")
    print(f"peak memory   {r.peak_memory_mb:,.0f} MB")
    if args.json:
        from parcae_lm.files import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(r.to_dict(), indent=2))
    return 0
