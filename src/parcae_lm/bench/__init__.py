"""Throughput benchmarks of the paths users take: a plain training loop and cached generation."""

from parcae_lm.bench.generate import GenerateBenchResult, bench_generate
from parcae_lm.bench.train import TrainBenchResult, bench_config, bench_training

__all__ = ["GenerateBenchResult", "TrainBenchResult", "bench_config", "bench_generate", "bench_training"]
