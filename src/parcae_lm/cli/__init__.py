"""`parcae`: one command with subcommands; each is a plain function in this package (see command.py for
how a function's signature and docstring become its options)."""

from __future__ import annotations

from parcae_lm.cli import bench, data, eval, fit, generate, infer, info, serve, sweep, tokenizer, train
from parcae_lm.cli.command import Group, run

# The commands, in the order `parcae --help` lists them.
COMMANDS = {
    "train": train.train,
    "generate": generate.generate,
    "serve": serve.serve,
    "info": info.info,
    "eval": Group(
        "Evaluate a model: bits per byte, CORE, Core-Extended, LAMBADA, reasoning tasks.",
        {
            "bpb": eval.bpb,
            "core": eval.core,
            "core-extended": eval.core_extended,
            "lambada": eval.lambada,
            "reasoning": eval.reasoning,
            "fetch": eval.fetch,
            "parity": eval.parity,
            "anchor": eval.anchor,
        },
    ),
    "data": Group(
        "Corpora and tokenized shards.",
        {
            "prepare": data.prepare,
            "default": data.default,
            "fetch-fineweb": data.fetch_fineweb,
            "info": data.info,
        },
    ),
    "tokenizer": Group("Train byte-level BPE tokenizers.", {"train": tokenizer.train}),
    "bench": Group(
        "Throughput benchmarks on this machine.", {"train": bench.train, "generate": bench.generate}
    ),
    "infer": Group(
        "Adaptive depth, KV-cache strategies, quantization, export.",
        {
            "adaptive-eval": infer.adaptive_eval,
            "cache-eval": infer.cache_eval,
            "quantize": infer.quantize,
            "export": infer.export,
            "export-hf": infer.export_hf,
        },
    ),
    "fit": Group(
        "Fit scaling laws to a results table (needs the 'scaling' extra).",
        {
            "isoflop": fit.isoflop,
            "parametric": fit.parametric,
            "testtime": fit.testtime,
            "unified": fit.unified,
        },
    ),
    "sweep": sweep.sweep,
}


def main(argv: list[str] | None = None) -> int:
    return run(COMMANDS, argv)
