"""`train(cfg)`: a whole training job, in one process or under torchrun.

Everything that can be checked without writing is checked first: the batch split, the data and its
tokenizer (the shards' fingerprint must match), the model config and the loader. Then rank 0 claims the
run directory: it takes the directory's exclusive lock for the whole run (a second training into the same
directory is refused at once, naming the holder), and writes config.yaml and tokenizer/. Then model and
optimizer, a resume from the newest checkpoint if asked, the budget, the step loop, a final evaluation
over the whole validation split, and the outputs: the model in `save_pretrained` form, samples.txt,
curves.png, summary.json and out_dir/latest. A run directory this call created is removed again if the
setup fails before the first step. A non-finite loss, gradient or weight stops the run with a
TrainingError before anything is saved, so the last checkpoint on disk is always a good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from parcae_lm.checkpoint import save_pretrained
from parcae_lm.config import ModelConfig
from parcae_lm.config.train import RunConfig, default_run_name
from parcae_lm.data.default import prepare_default
from parcae_lm.data.loader import TokenLoader
from parcae_lm.data.shards import check_shards
from parcae_lm.errors import ConfigError, ParcaeError, StorageError
from parcae_lm.files import atomic_write_text, ensure_dir, exclusive_lock, write_failure
from parcae_lm.model import build_model
from parcae_lm.model.flops import flops_per_token
from parcae_lm.runtime import matmul_peak_flops
from parcae_lm.tokenizer import Tokenizer
from parcae_lm.train.budget import Budget, max_steps, training_seconds
from parcae_lm.train.checkpoint import Checkpoints, TrainerState, list_checkpoints
from parcae_lm.train.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    destroy_distributed,
    init_distributed,
    wrap_model,
)
from parcae_lm.train.loop import Report, train_loop
from parcae_lm.train.optim import MuonAdamW
from parcae_lm.train.outputs import full_model, point_latest, write_samples, write_summary
from parcae_lm.train.step import Stepper
from parcae_lm.train.system import configure, pick_cpu_threads, seed_everything
from parcae_lm.train.telemetry import MetricsLogger, ProgressBar, Throughput, plot_curves, say
from parcae_lm.train.validate import Validator, eval_depths


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)  # what summary.json holds (rank 0; {} elsewhere)


def train(cfg: RunConfig, start_time: float | None = None) -> RunResult:
    """Run the training job described by `cfg`. `start_time` (time.time()) is when the command started:
    a wall-clock budget counts from it (default: now)."""
    t_start = start_time if start_time is not None else time.time()
    info = init_distributed(cfg.system.device)
    try:
        return _train(cfg, t_start, info)
    finally:
        destroy_distributed()


LOCK_FILE = ".lock"  # in the run directory; names the process that holds it


def _train(cfg: RunConfig, t_start: float, info: DistInfo) -> RunResult:
    configure(cfg.system, info.device)
    # Every rank uses rank 0's run name (a default one carries rank 0's clock).
    cfg = dataclasses.replace(
        cfg, run_name=broadcast_object(cfg.run_name or default_run_name(cfg.model_name))
    )
    run_dir = Path(cfg.out_dir) / cfg.run_name
    cfg.grad_accum_steps(info.world_size)  # fail on an unsplittable batch before preparing data
    tokenizer, shard_dir = _prepare(cfg, info)
    mcfg = cfg.model_config(tokenizer.vocab_size)  # the model overrides, checked before anything is written
    loader = _loader(cfg, shard_dir, info)  # and enough data for one batch
    with _claim(run_dir, cfg, tokenizer, info) as setup_done:
        seed_everything(cfg.seed)
        stepper = _stepper(cfg, mcfg, info)
        compat = _compat(cfg, mcfg, shard_dir, info)
        checkpoints = Checkpoints(run_dir / "checkpoints", compat, cfg.checkpoint.keep_last_k)
        state = _resume(cfg, checkpoints, stepper, loader, info)

        peak = _matmul_peak(cfg, info)  # after the resume: it draws random matrices
        token_bytes = torch.as_tensor(tokenizer.token_bytes(), dtype=torch.long)
        eval_bs = cfg.eval.batch_size or cfg.train.micro_batch_size
        validator = Validator(shard_dir, eval_bs, cfg.data.seq_len, token_bytes, info)
        n_params = sum(p.numel() for p in stepper.module.parameters())
        fpt = float(flops_per_token(mcfg, cfg.data.seq_len))
        final_depths = eval_depths(cfg.eval, mcfg, final=True)
        steps = max_steps(cfg, fpt, n_params)
        budget = _budget(cfg, state, steps, validator, stepper.model, final_depths, t_start)
        say(info.is_main, _describe(cfg, run_dir, mcfg, n_params, budget, info, peak))
        setup_seconds = time.time() - t_start

        throughput = Throughput(info.device, fpt, peak, info.world_size)
        report = _report(cfg, run_dir, state, budget, throughput, info)
        setup_done()
        with report:
            train_loop(
                cfg,
                state,
                budget,
                stepper,
                loader,
                validator,
                eval_depths(cfg.eval, mcfg),
                checkpoints,
                report,
            )
            report.bar.close()
            t_eval = time.perf_counter()
            final = validator(stepper.model, final_depths, max_batches=None)
            eval_seconds = time.perf_counter() - t_eval
            report.final(state, final)
        numbers = {
            "params": n_params,
            "flops_per_token": fpt,
            "matmul_peak_flops": peak,
            "final_eval_seconds": round(eval_seconds, 2),
            "setup_seconds": round(setup_seconds, 2),  # data preparation, model build, benchmarks
            "world_size": info.world_size,
        }
        model = full_model(stepper.module, mcfg, cfg.system.strategy)
        summary = (
            _finish(cfg, run_dir, model, mcfg, tokenizer, state, final, numbers, t_start)
            if info.is_main
            else {}
        )
        barrier()
    return RunResult(run_dir=run_dir, summary=summary)


def _prepare(cfg: RunConfig, info: DistInfo) -> tuple[Tokenizer, Path]:
    """The tokenizer and shard directory: the configured ones (the shards checked to be that tokenizer's),
    or the default corpus built once (rank 0 first). Nothing is written into the run directory yet."""
    if cfg.data.shard_dir is not None:
        shard_dir, tok_dir = Path(cfg.data.shard_dir), Path(cfg.data.tokenizer_dir)
        if not shard_dir.is_dir():
            raise ConfigError(f"data.shard_dir {shard_dir} does not exist")
        if not tok_dir.is_dir():
            raise ConfigError(f"data.tokenizer_dir {tok_dir} does not exist")
        tokenizer = Tokenizer.load(tok_dir)
        check_shards(shard_dir, tokenizer)
        return tokenizer, shard_dir
    if info.is_main:  # other ranks wait, then find it cached (prepare_default also holds a file lock)
        prepare_default(None, cfg.data.vocab_size, progress=cfg.log.progress)
    barrier()
    tok_dir, shard_dir = (Path(p) for p in prepare_default(None, cfg.data.vocab_size, progress=False))
    return Tokenizer.load(tok_dir), shard_dir


@contextmanager
def _claim(run_dir: Path, cfg: RunConfig, tokenizer: Tokenizer, info: DistInfo) -> Iterator[Any]:
    """Rank 0 holds the run directory's exclusive lock for the whole run. Yields `setup_done`, to call
    when the run is about to take its first step: it writes config.yaml and tokenizer/ (so a failed setup
    never leaves a config that did not run); before it, a failure removes a directory this call created.
    A rank-0 failure here reaches every rank."""
    created, started = False, False

    def setup_done() -> None:
        nonlocal started
        _on_main(info, lambda: _write_run_files(run_dir, cfg, tokenizer))
        started = True

    with contextlib.ExitStack() as stack:

        def claim() -> None:
            nonlocal created
            created = _make_run_dir(run_dir)
            stack.enter_context(exclusive_lock(run_dir / LOCK_FILE, f"run directory {run_dir}"))
            if not cfg.resume and list_checkpoints(run_dir / "checkpoints"):
                raise ConfigError(
                    f"run directory {run_dir} already has checkpoints; pass --resume true to continue it, "
                    "or choose another --run_name"
                )

        try:
            _on_main(info, claim)
            yield setup_done
        except BaseException:
            if created and not started:
                shutil.rmtree(run_dir, ignore_errors=True)  # still under our lock: nobody else is in it
            raise


def _on_main(info: DistInfo, work) -> None:
    """Run `work` on rank 0; a ParcaeError it raises is raised on every rank."""
    error: ParcaeError | None = None
    if info.is_main:
        try:
            work()
        except ParcaeError as e:
            error = e
    error = broadcast_object(error)
    if error is not None:
        raise error


def _write_run_files(run_dir: Path, cfg: RunConfig, tokenizer: Tokenizer) -> None:
    try:
        tokenizer.save(run_dir / "tokenizer")
    except OSError as e:  # a StorageError already, or the tokenizers library's own write error
        raise write_failure(e, run_dir / "tokenizer", "the tokenizer") from e
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml(), "the run config")


def _make_run_dir(run_dir: Path) -> bool:
    """Create the run directory (and out_dir); True if this call created it."""
    ensure_dir(run_dir.parent, "out_dir")
    try:
        run_dir.mkdir()
    except FileExistsError:
        if not run_dir.is_dir():
            raise StorageError(f"run directory {run_dir} is a file, not a directory") from None
        return False
    except OSError as e:
        raise write_failure(e, run_dir, "the run directory") from None
    return True


def _loader(cfg: RunConfig, shard_dir: Path, info: DistInfo) -> TokenLoader:
    """This rank's share of the shuffled training windows (each epoch permuted by (seed, epoch))."""
    return TokenLoader(
        shard_dir,
        "train",
        cfg.train.micro_batch_size,
        cfg.data.seq_len,
        rank=info.rank,
        world_size=info.world_size,
        seed=cfg.seed,
        shuffle=True,
        with_doc_ids=cfg.data.doc_masking,
    )


def _compat(cfg: RunConfig, mcfg: ModelConfig, shard_dir: Path, info: DistInfo) -> dict[str, Any]:
    """What a resumed checkpoint must agree with."""
    return {
        "model_config": mcfg.to_dict(),
        "seq_len": cfg.data.seq_len,
        "global_batch_size": cfg.train.global_batch_size,
        "micro_batch_size": cfg.train.micro_batch_size,
        "world_size": info.world_size,
        "seed": cfg.seed,
        "shard_dir": str(shard_dir),
    }


def _stepper(cfg: RunConfig, mcfg: ModelConfig, info: DistInfo) -> Stepper:
    """The model on its device (checkpointed, compiled and wrapped as configured) and its optimizer."""
    raw = build_model(mcfg).to(info.device)
    raw.activation_checkpointing = cfg.system.activation_checkpointing
    if cfg.system.compile:
        raw.compile_blocks()  # before wrapping, so DDP/FSDP see the compiled blocks
    model = wrap_model(raw, cfg.system.strategy, info)
    params = [p for p in raw.parameters() if p.requires_grad]
    return Stepper(model, MuonAdamW(raw, cfg.optim), params, info, cfg.system.precision, cfg.train.grad_clip)


def _resume(
    cfg: RunConfig, checkpoints: Checkpoints, stepper: Stepper, loader: TokenLoader, info: DistInfo
) -> TrainerState:
    if not cfg.resume:
        return TrainerState()
    path = checkpoints.latest()
    if path is None:
        say(info.is_main, f"no checkpoint in {checkpoints.dir}: starting from scratch")
        return TrainerState()
    state = checkpoints.resume(
        path, stepper.module, stepper.optimizer.optimizers, loader, info.rank, info.world_size
    )
    say(info.is_main, f"resumed from {path} at step {state.step}")
    return state


def _matmul_peak(cfg: RunConfig, info: DistInfo) -> float:
    """The measured matmul peak (MFU's denominator); on CPU without a thread count, the fastest count."""
    if info.device.type == "cpu" and cfg.system.threads is None:
        candidates = torch.get_num_threads()
        threads, peak = pick_cpu_threads()
        say(info.is_main, f"CPU threads: {threads} (the fastest fp32 matmul among 1..{candidates})")
        return peak
    return matmul_peak_flops(info.device, seconds=0.3)


def _budget(
    cfg: RunConfig,
    state: TrainerState,
    steps: int | None,
    validator: Validator,
    model: nn.Module,
    final_depths,
    t_start: float,
) -> Budget:
    """A step budget, or the seconds of a time budget (fixed at the first launch; a resume keeps them)."""
    if steps is None and state.train_seconds is None:
        final_eval = validator.seconds_for_full_split(model, final_depths)
        seconds = training_seconds(cfg.train.max_time_minutes, time.time() - t_start, final_eval)
        state.train_seconds = broadcast_object(seconds)
    return Budget(max_steps=steps, train_seconds=state.train_seconds)


def _describe(
    cfg: RunConfig,
    run_dir: Path,
    mcfg: ModelConfig,
    n_params: int,
    budget: Budget,
    info: DistInfo,
    peak: float,
) -> str:
    grad_accum = cfg.grad_accum_steps(info.world_size)
    length = (
        f"{budget.max_steps} steps"
        if budget.max_steps is not None
        else f"{budget.train_seconds:.0f}s of training"
    )
    return (
        f"run {run_dir}: {'Parcae' if mcfg.is_parcae else 'GPT'} {mcfg.name} {n_params / 1e6:.2f}M params, "
        f"{info.world_size} rank(s) x {cfg.train.micro_batch_size} seqs x {grad_accum} accum = "
        f"{cfg.train.global_batch_size} seqs x {cfg.data.seq_len} tokens/step; {length}; "
        f"device {info.device}, matmul peak {peak / 1e9:.1f} GFLOP/s"
    )


def _report(
    cfg: RunConfig, run_dir: Path, state: TrainerState, budget: Budget, throughput: Throughput, info: DistInfo
) -> Report:
    """Metrics (rank 0; a resume keeps what was logged up to its checkpoint), throughput and the bar."""
    metrics = None
    if info.is_main:
        metrics = MetricsLogger(
            run_dir,
            tensorboard=cfg.log.tensorboard,
            wandb=cfg.log.wandb,
            wandb_project=cfg.log.wandb_project,
            run_name=cfg.run_name,
            config=cfg.to_dict(),
            resume_step=state.step if state.step > 0 else None,
        )
    show = info.is_main and cfg.log.progress
    bar = ProgressBar(show, budget.max_steps, budget.train_seconds, state.step, state.train_elapsed)
    return Report(metrics, throughput, bar)


def _finish(
    cfg: RunConfig,
    run_dir: Path,
    model: nn.Module,
    mcfg: ModelConfig,
    tokenizer: Tokenizer,
    state: TrainerState,
    final: dict[str, float],
    numbers: dict[str, Any],
    t_start: float,
) -> dict[str, Any]:
    """Rank 0: the model, samples, curves, summary.json and the latest link; returns the summary."""
    save_pretrained(model, run_dir)
    samples = write_samples(model, tokenizer, cfg.sample, cfg.seed, run_dir / "samples.txt")
    plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", f"{cfg.run_name} ({mcfg.name})")
    main = f"_d{int(mcfg.mean_recurrence)}" if mcfg.is_parcae else ""
    tok_s = state.tokens / max(state.train_elapsed, 1e-9)
    summary = write_summary(
        run_dir,
        {
            "model": mcfg.name,
            "params": numbers["params"],
            "steps": state.step,
            "tokens": state.tokens,
            "train_seconds": round(state.train_elapsed, 2),
            "tokens_per_second": round(tok_s, 1),
            "flops_per_token": numbers["flops_per_token"],
            "mfu": tok_s * numbers["flops_per_token"] / numbers["matmul_peak_flops"] / numbers["world_size"],
            **{k: numbers[k] for k in ("matmul_peak_flops", "final_eval_seconds", "setup_seconds")},
            "total_seconds": round(time.time() - t_start, 2),
            "val_loss": final[f"loss{main}"],
            "val_bpb": final[f"bpb{main}"],
            "val": final,
            "world_size": numbers["world_size"],
            "samples": samples,
        },
    )
    point_latest(run_dir)
    return summary
