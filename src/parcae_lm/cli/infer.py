"""`parcae infer ...`: adaptive-depth and KV-cache quality sweeps, int8 quantization, export.

    parcae infer adaptive-eval RUN --criterion state --thresholds 0.01,0.02,0.05 [--max-steps 4]
    parcae infer cache-eval RUN --strategies full,last,first-last,ring-2
    parcae infer quantize RUN [--out FILE.pt]            speed, size and bpb of int8 vs fp32
    parcae infer export RUN OUT --format program|onnx --seq-len 128
    parcae infer export-hf RUN OUT                        a transformers-loadable copy

RUN is a run / save_pretrained directory. Quality is validation bits per byte scored token by token
through the cache (`infer.quality`), on the first --batches × --batch-size windows of --seq-len tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from parcae_lm.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    grp = subparsers.add_parser("infer", help="adaptive depth, KV-cache strategies, quantization, export")
    sub = grp.add_subparsers(dest="infer", metavar="WHAT")

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="run / save_pretrained directory")
        p.add_argument("--shards", default=None, help="shard directory (default: the prepared Shakespeare)")
        p.add_argument("--tokenizer", default=None, help="tokenizer directory (default MODEL/tokenizer)")
        p.add_argument("--seq-len", type=int, default=128)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--batches", type=int, default=2)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--json", default=None, help="write the results to this JSON file")

    p = sub.add_parser("adaptive-eval", help="bpb vs mean iterations per token over exit thresholds")
    data_args(p)
    p.add_argument("--criterion", default="state", choices=["state", "kl"])
    p.add_argument("--thresholds", required=True, help="comma-separated τ values")
    p.add_argument("--max-steps", type=int, default=None, help="iteration cap (default mean_recurrence)")
    p.add_argument("--cache", default="full", help="cache strategy: full, last, first-last, ring-N")
    p.add_argument("--plot", default=None, help="write the quality/compute curve to this PNG")
    p.set_defaults(func=cmd_adaptive_eval)

    p = sub.add_parser("cache-eval", help="bpb and memory of KV-cache strategies")
    data_args(p)
    p.add_argument("--strategies", default="full,last,first-last,ring-2")
    p.add_argument("--num-steps", type=int, default=None)
    p.set_defaults(func=cmd_cache_eval)

    p = sub.add_parser("quantize", help="int8 dynamic quantization: decode speed, size and bpb vs fp32")
    data_args(p)
    p.add_argument("--out", default=None, help="save the quantized state dict here (torch.save)")
    p.add_argument("--new-tokens", type=int, default=64, help="decode steps timed at batch 1")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("export", help="torch.export program (.pt2) or ONNX graph of the fixed-depth forward")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--format", default="program", choices=["program", "onnx"])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--num-steps", type=int, default=None)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("export-hf", help="write a copy loadable with transformers' AutoModelForCausalLM")
    p.add_argument("model")
    p.add_argument("out")
    p.set_defaults(func=cmd_export_hf)


# --------------------------------------------------------------------------------------------------
def _setup(args):
    import torch

    from parcae_lm.checkpoint import load_run
    from parcae_lm.infer.quality import validation_batches

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be ≥ 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    for name in ("seq_len", "batch_size", "batches"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    run = load_run(args.model, tokenizer=args.tokenizer)
    model, token_bytes = run.model, run.tokenizer.token_bytes()
    shards = args.shards
    if shards is None:
        from parcae_lm.data.default import prepare_default

        _, shards = prepare_default(vocab_size=model.config.vocab_size, progress=False)
    if args.seq_len > model.config.block_size:
        raise ConfigError(
            f"--seq-len {args.seq_len} exceeds the model's block_size={model.config.block_size}"
        )
    batches = validation_batches(shards, args.seq_len, args.batch_size, args.batches, run.tokenizer)
    return model, token_bytes, batches


def _write_json(path: str | None, payload) -> None:
    if path:
        from parcae_lm.files import atomic_write_text

        atomic_write_text(Path(path), json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None


def cmd_adaptive_eval(args) -> int:
    from parcae_lm.infer.adaptive import ExitCriterion, ExitRule
    from parcae_lm.infer.quality import adaptive_sweep, plot_quality_compute
    from parcae_lm.model import CacheStrategy

    thresholds = _parse_floats(args.thresholds, "--thresholds")
    criterion = ExitCriterion(args.criterion)
    for t in thresholds:
        ExitRule(criterion, t, args.max_steps)  # validate every threshold before the long run
    strategy = CacheStrategy.parse(args.cache)
    model, token_bytes, batches = _setup(args)
    t0 = time.time()
    results = adaptive_sweep(model, batches, token_bytes, criterion, thresholds, args.max_steps, strategy)
    base = next(r for r in results if r.label == f"fixed-{args.max_steps or model.config.mean_recurrence}")
    print(f"{'rule':>14} {'bpb':>8} {'Δbpb':>7} {'mean iters':>10} {'of full':>7}")
    for r in results:
        delta = r.bits_per_byte / base.bits_per_byte - 1
        print(
            f"{r.label:>14} {r.bits_per_byte:>8.4f} {delta:>+7.2%} {r.mean_iterations:>10.3f} "
            f"{r.core_flops_fraction:>7.1%}"
        )
    print(f"{results[0].tokens} scored tokens per rule, cache {strategy}, {time.time() - t0:.0f} s")
    if args.plot:
        plot_quality_compute(results, args.plot, f"adaptive depth ({criterion.value}), cache {strategy}")
        print(f"wrote {args.plot}")
    _write_json(args.json, [r.to_dict() for r in results])
    return 0


def cmd_cache_eval(args) -> int:
    from parcae_lm.infer.adaptive import ExitRule
    from parcae_lm.infer.quality import stepwise_bpb
    from parcae_lm.model import CacheStrategy

    strategies = [CacheStrategy.parse(s.strip()) for s in args.strategies.split(",") if s.strip()]
    if not strategies:
        raise ConfigError("--strategies is empty")
    model, token_bytes, batches = _setup(args)
    rule = ExitRule(threshold=0.0, max_steps=args.num_steps)
    results = [stepwise_bpb(model, batches, token_bytes, rule, s, str(s), progress=True) for s in strategies]
    base = results[0]
    print(f"{'cache':>11} {'bpb':>8} {'Δbpb':>7} {'KV MiB':>7} {'of ' + base.label:>8}")
    for r in results:
        print(
            f"{r.label:>11} {r.bits_per_byte:>8.4f} {r.bits_per_byte / base.bits_per_byte - 1:>+7.2%} "
            f"{r.kv_cache_bytes / 2**20:>7.2f} {r.kv_cache_bytes / base.kv_cache_bytes:>8.1%}"
        )
    print(f"{base.tokens} scored tokens, batch {args.batch_size} × {args.seq_len} positions")
    _write_json(args.json, [r.to_dict() for r in results])
    return 0


def cmd_quantize(args) -> int:
    import torch

    from parcae_lm.infer.export import quantize_int8, state_dict_bytes
    from parcae_lm.infer.quality import stepwise_bpb
    from parcae_lm.model import Decoder

    model, token_bytes, batches = _setup(args)
    qmodel = quantize_int8(model)
    rows = []
    for name, m in (("fp32", model), ("int8-dynamic", qmodel)):
        r = stepwise_bpb(m, batches, token_bytes, label=name, progress=True)
        eng = Decoder(m, 1, 16 + args.new_tokens)
        logits = eng.prefill(torch.zeros(1, 16, dtype=torch.long))
        t0 = time.perf_counter()
        for _ in range(args.new_tokens):
            logits = eng.step(logits.argmax(-1))
        tps = args.new_tokens / (time.perf_counter() - t0)
        rows.append(
            {"model": name, "bpb": r.bits_per_byte, "decode_tok_s": tps, "bytes": state_dict_bytes(m)}
        )
    base = rows[0]
    print(f"{'model':>13} {'bpb':>8} {'Δbpb':>7} {'decode tok/s':>12} {'size MiB':>8}")
    for row in rows:
        print(
            f"{row['model']:>13} {row['bpb']:>8.4f} {row['bpb'] / base['bpb'] - 1:>+7.2%} "
            f"{row['decode_tok_s']:>12.1f} {row['bytes'] / 2**20:>8.2f}"
        )
    if args.out:
        import io

        from parcae_lm.files import atomic_write_bytes

        buf = io.BytesIO()
        torch.save(qmodel.state_dict(), buf)
        atomic_write_bytes(Path(args.out), buf.getvalue())
        print(f"wrote {args.out}")
    _write_json(args.json, rows)
    return 0


def cmd_export(args) -> int:
    import os

    from parcae_lm.checkpoint import from_pretrained
    from parcae_lm.infer.export import export_onnx, export_program, save_program

    model = from_pretrained(args.model)
    if args.format == "onnx":
        path = export_onnx(model, args.out, args.seq_len, args.num_steps)
    else:
        path = save_program(export_program(model, args.seq_len, args.num_steps), args.out)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    return 0


def cmd_export_hf(args) -> int:
    from parcae_lm.infer.hf import export_hf

    print(f"wrote {export_hf(args.model, args.out)}")
    return 0
