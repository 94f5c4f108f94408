"""The training loop: gradient accumulation, MuonAdamW with schedules, validation at several depths,
telemetry, atomic checkpoints with bitwise resume, and the run directory.

`train(cfg)` runs the whole job (also under torchrun) and returns the summary that it writes to
`summary.json`. The step itself never waits on the device except at the logging interval (loss, grad
norm and the non-finite flag stay on device until then), and a non-finite loss or gradient stops the run
with a TrainingError *before* anything is saved, so the last checkpoint on disk is always a good one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from parcae_lm.bench import matmul_peak_flops
from parcae_lm.cache import atomic_write_text
from parcae_lm.checkpoint import save_pretrained
from parcae_lm.config.train import Precision, RunConfig, Strategy, default_run_name
from parcae_lm.errors import ConfigError, TrainingError
from parcae_lm.flops import flops_per_token
from parcae_lm.model import build_model
from parcae_lm.model.recurrence import DepthShard, TrainDraw
from parcae_lm.runtime import keep_freed_memory
from parcae_lm.train import checkpoint as ckpt
from parcae_lm.train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    destroy_distributed,
    init_distributed,
    no_grad_sync,
    unwrap,
    wrap_model,
)
from parcae_lm.train.optim import MuonAdamW, lr_factor, muon_momentum, muon_weight_decay
from parcae_lm.train.telemetry import MetricsLogger, plot_curves

FINAL_RESERVE_MARGIN_S = 10.0  # seconds kept free in a time budget for saving, samples, plots


# ---------------------------------------------------------------------- setup helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(precision: Precision, device: torch.device):
    use_bf16 = precision == Precision.bf16 or (precision == Precision.auto and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def prepare_data(cfg: RunConfig, info: DistInfo) -> tuple[Path, Path]:
    """(tokenizer_dir, shard_dir): the configured ones, or the default corpus built once (rank 0 first)."""
    if cfg.data.shard_dir is not None:
        shard_dir, tok_dir = Path(cfg.data.shard_dir), Path(cfg.data.tokenizer_dir)
        if not shard_dir.is_dir():
            raise ConfigError(f"shard_dir {shard_dir} does not exist")
        if not tok_dir.is_dir():
            raise ConfigError(f"tokenizer_dir {tok_dir} does not exist")
        return tok_dir, shard_dir
    from parcae_lm.data.default import prepare_default

    if info.is_main:  # other ranks wait, then find it cached (prepare_default also holds a file lock)
        prepare_default(None, cfg.data.vocab_size, progress=cfg.log.progress)
    barrier()
    tok_dir, shard_dir = prepare_default(None, cfg.data.vocab_size, progress=False)
    return Path(tok_dir), Path(shard_dir)


def eval_depths(cfg: RunConfig, mcfg, final: bool = False) -> list[int | None]:
    """Validation depths: the configured ones plus the mean recurrence (Parcae); [None] for GPT."""
    if not getattr(mcfg, "is_parcae", False):
        return [None]
    chosen = cfg.eval.final_depths if final and cfg.eval.final_depths is not None else cfg.eval.depths
    return sorted(set(chosen) | {int(mcfg.mean_recurrence)})


def pick_cpu_threads() -> tuple[int, float]:
    """Use the thread count (1..torch's default) with the fastest fp32 matmul; returns (threads, its FLOP/s).

    On a machine shared with other jobs, fewer threads than cores can be much faster (no spinning at
    barriers behind descheduled threads); on an idle one all cores win. The benchmark decides."""
    max_threads = torch.get_num_threads()
    best = (max_threads, 0.0)
    for n in range(1, max_threads + 1):
        torch.set_num_threads(n)
        flops = matmul_peak_flops("cpu", size=512, seconds=0.25)
        if flops > best[1]:
            best = (n, flops)
    torch.set_num_threads(best[0])
    return best


# ---------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    shard_dir: Path,
    depths: list[int | None],
    batch_size: int,
    seq_len: int,
    token_bytes: torch.Tensor,
    info: DistInfo,
    max_batches: int | None,
    split: str = "val",
) -> dict[str, float]:
    """Validation loss (nats per scored token) and bits per byte at each depth, over the split (or its first
    `max_batches` batches), sharded round-robin over ranks and summed across them.

    Per-batch accounting is `parcae_lm.eval.bpb.batch_sums` (documents masked to themselves, special-token
    targets not scored), so these numbers are the ones `parcae eval bpb` reports for the same shards."""
    from parcae_lm.data.loader import iter_eval_batches

    model = _eval_module(model)
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    for depth in depths:
        totals = torch.zeros(3, dtype=torch.float64)  # nats, scored tokens, bytes
        n_local, n_seen = 0, 0
        first = None
        for i, batch in enumerate(
            iter_eval_batches(shard_dir, split, batch_size, seq_len, with_doc_ids=True)
        ):
            if max_batches is not None and i >= max_batches:
                break
            n_seen += 1
            first = batch if first is None else first
            if i % info.world_size != info.rank:
                continue
            totals += _eval_batch(model, batch, depth, token_bytes)
            n_local += 1
        # A sharded (FSDP) model needs every rank in every forward: short ranks run discarded batches.
        for _ in range(math.ceil(n_seen / info.world_size) - n_local):
            _eval_batch(model, first, depth, token_bytes)
        totals = all_reduce_sum(totals.to(info.device)).cpu()
        nats, tokens, nbytes = totals.tolist()
        if tokens == 0 or nbytes == 0:
            raise TrainingError(f"validation split {split!r} in {shard_dir} has no scored tokens")
        suffix = "" if depth is None else f"_d{depth}"
        results[f"loss{suffix}"] = nats / tokens
        results[f"bpb{suffix}"] = nats / math.log(2) / nbytes
    model.train(was_training)
    return results


def _eval_module(model: nn.Module) -> nn.Module:
    # DDP adds collectives (buffer broadcast) to every forward; evaluation needs none, so use the module.
    inner = unwrap(model)
    return model if hasattr(inner, "set_requires_gradient_sync") else inner  # FSDP2 must stay sharded


def _eval_batch(model: nn.Module, batch, depth: int | None, token_bytes: torch.Tensor) -> torch.Tensor:
    from parcae_lm.eval.bpb import batch_sums

    return torch.tensor(batch_sums(model, batch, token_bytes, depth), dtype=torch.float64)


# ---------------------------------------------------------------------- the run


@dataclass
class Budget:
    max_steps: int | None  # None: time-limited
    train_seconds: float | None

    def progress(self, step: int, train_elapsed: float) -> float:
        if self.max_steps is not None:
            return step / self.max_steps
        return train_elapsed / self.train_seconds

    def step_fraction(self, last_step_seconds: float) -> float:
        if self.max_steps is not None:
            return 1.0 / self.max_steps
        return last_step_seconds / self.train_seconds

    def done(self, step: int, train_elapsed: float, last_step_seconds: float = 0.0) -> bool:
        if self.max_steps is not None:
            return step >= self.max_steps
        # Do not start a step that would end past the budget.
        return train_elapsed + last_step_seconds > self.train_seconds


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches done on this rank
    tokens: int = 0  # training tokens consumed, all ranks
    train_elapsed: float = 0.0  # seconds in the training loop, periodic evals and checkpoints included
    train_seconds: float | None = None  # the time budget, fixed at the first launch
    best_val_bpb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


def train(cfg: RunConfig, config_name: str = "run", start_time: float | None = None) -> RunResult:
    """Run the training job described by `cfg` (single process or under torchrun)."""
    t_start = start_time if start_time is not None else time.time()
    info = init_distributed(cfg.system.device)
    try:
        return _train(cfg, config_name, t_start, info)
    finally:
        destroy_distributed()


def _train(cfg: RunConfig, config_name: str, t_start: float, info: DistInfo) -> RunResult:
    if cfg.system.threads is not None:
        torch.set_num_threads(cfg.system.threads)
    if info.device.type == "cpu":
        keep_freed_memory()  # (the CLI already did; this covers train() called from Python)
    if info.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run_name = broadcast_object(cfg.run_name or default_run_name(config_name))
    cfg = dataclasses.replace(cfg, run_name=run_name)
    run_dir = Path(cfg.out_dir) / run_name
    ckpt_dir = run_dir / "checkpoints"
    resume_from = ckpt.latest_checkpoint(ckpt_dir) if cfg.resume else None
    if not cfg.resume and ckpt.list_checkpoints(ckpt_dir):
        raise ConfigError(
            f"run directory {run_dir} already has checkpoints; pass --resume true to continue it, or choose "
            "another --run_name"
        )
    grad_accum = cfg.grad_accum_steps(info.world_size)
    log = _Printer(info.is_main)

    # --- data and tokenizer -------------------------------------------------------------------
    from parcae_lm.data.loader import TokenLoader
    from parcae_lm.tokenizer import Tokenizer

    tok_dir, shard_dir = prepare_data(cfg, info)
    tokenizer = Tokenizer.load(tok_dir)
    token_bytes = torch.as_tensor(tokenizer.token_bytes(), dtype=torch.long)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(run_dir / "tokenizer")
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    barrier()

    # --- model and optimizer ------------------------------------------------------------------
    seed_everything(cfg.seed)
    mcfg = cfg.model_config(tokenizer.vocab_size)
    raw = build_model(mcfg).to(info.device)
    n_params = sum(p.numel() for p in raw.parameters())
    fpt = float(flops_per_token(mcfg, cfg.data.seq_len))
    raw.activation_checkpointing = cfg.system.activation_checkpointing
    if cfg.system.compile:
        raw.compile_blocks()  # before wrapping, so DDP/FSDP see the compiled blocks
    model = wrap_model(raw, cfg.system.strategy, info)
    optimizer = MuonAdamW(unwrap(model), cfg.optim)
    depths = eval_depths(cfg, mcfg)
    final_depths = eval_depths(cfg, mcfg, final=True)
    compat = {
        "model_config": mcfg.to_dict(),
        "seq_len": cfg.data.seq_len,
        "global_batch_size": cfg.train.global_batch_size,
        "micro_batch_size": cfg.train.micro_batch_size,
        "world_size": info.world_size,
        "seed": cfg.seed,
        "shard_dir": str(shard_dir),
    }

    # --- budget --------------------------------------------------------------------------------
    max_steps = _max_steps(cfg, fpt, n_params)
    loader = TokenLoader(
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
    state = TrainerState()
    if resume_from is not None:
        trainer_state, loader_state = ckpt.load_checkpoint(
            resume_from, unwrap(model), optimizer.optimizers, compat, info.rank, info.world_size
        )
        state = TrainerState(**trainer_state)
        loader.load_state_dict(loader_state)
        log(f"resumed from {resume_from} at step {state.step}")
    elif cfg.resume:
        log(f"no checkpoint in {ckpt_dir}: starting from scratch")

    if info.device.type == "cpu" and cfg.system.threads is None:
        candidates = torch.get_num_threads()
        threads, peak = pick_cpu_threads()
        log(f"CPU threads: {threads} (the fastest fp32 matmul among 1..{candidates})")
    else:
        peak = matmul_peak_flops(info.device, seconds=0.3)
    eval_bs = cfg.eval.batch_size or cfg.train.micro_batch_size
    if max_steps is None and state.train_seconds is None:
        reserve = _final_reserve(model, shard_dir, final_depths, eval_bs, cfg, token_bytes, info)
        budget_s = cfg.train.max_time_minutes * 60.0 - (time.time() - t_start) - reserve
        if budget_s <= 0:
            raise ConfigError(
                f"max_time_minutes={cfg.train.max_time_minutes} leaves no time to train: data preparation took "
                f"{time.time() - t_start:.0f}s and the final evaluation needs about {reserve:.0f}s"
            )
        state.train_seconds = broadcast_object(budget_s)
    budget = Budget(max_steps=max_steps, train_seconds=state.train_seconds)
    setup_seconds = time.time() - t_start
    log(
        f"run {run_dir}: {type(raw).__name__} {mcfg.name} {n_params / 1e6:.2f}M params, "
        f"{info.world_size} rank(s) x {cfg.train.micro_batch_size} seqs x {grad_accum} accum = {cfg.train.global_batch_size} "
        f"seqs x {cfg.data.seq_len} tokens/step; "
        + (f"{max_steps} steps" if max_steps is not None else f"{budget.train_seconds:.0f}s of training")
        + f"; device {info.device}, matmul peak {peak / 1e9:.1f} GFLOP/s"
    )

    metrics = (
        MetricsLogger(
            run_dir,
            tensorboard=cfg.log.tensorboard,
            wandb=cfg.log.wandb,
            wandb_project=cfg.log.wandb_project,
            run_name=run_name,
            config=cfg.to_dict(),
            resume_step=state.step if resume_from is not None else None,
        )
        if info.is_main
        else None
    )
    try:
        run = _Run(
            cfg=cfg,
            model=model,
            raw=raw,
            optimizer=optimizer,
            loader=loader,
            info=info,
            metrics=metrics,
            ckpt_dir=ckpt_dir,
            compat=compat,
            depths=depths,
            shard_dir=shard_dir,
            token_bytes=token_bytes,
            fpt=fpt,
            peak=peak,
            eval_bs=eval_bs,
        )
        _loop(run, state, budget, grad_accum)
        # --- final evaluation over the whole validation split, model, samples, plots ------------
        t_eval = time.perf_counter()
        final = evaluate(
            model,
            shard_dir,
            final_depths,
            eval_bs,
            cfg.data.seq_len,
            token_bytes,
            info,
            max_batches=None,
        )
        eval_seconds = time.perf_counter() - t_eval
        if metrics is not None:
            metrics.log({"kind": "val", "step": state.step, "final": True, **final})
    finally:
        if metrics is not None:
            metrics.close()
    final_model = _full_model(model, raw, mcfg, cfg.system.strategy)
    summary: dict[str, Any] = {}
    if info.is_main:
        save_pretrained(final_model, run_dir)
        samples = write_samples(final_model, tokenizer, cfg, run_dir / "samples.txt")
        plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", f"{run_name} ({mcfg.name})")
        main_depth = "" if depths == [None] else f"_d{int(mcfg.mean_recurrence)}"
        summary = {
            "run_dir": str(run_dir),
            "model": mcfg.name,
            "params": n_params,
            "steps": state.step,
            "tokens": state.tokens,
            "train_seconds": round(state.train_elapsed, 2),
            "tokens_per_second": round(state.tokens / max(state.train_elapsed, 1e-9), 1),
            "flops_per_token": fpt,
            "mfu": state.tokens / max(state.train_elapsed, 1e-9) * fpt / peak / info.world_size,
            "matmul_peak_flops": peak,
            "final_eval_seconds": round(eval_seconds, 2),
            "setup_seconds": round(setup_seconds, 2),  # data preparation, model build, benchmarks
            "total_seconds": round(time.time() - t_start, 2),
            "val_loss": final[f"loss{main_depth}"],
            "val_bpb": final[f"bpb{main_depth}"],
            "val": final,
            "world_size": info.world_size,
            "paths": {
                "config": str(run_dir / "config.yaml"),
                "model": str(run_dir / "model.safetensors"),
                "tokenizer": str(run_dir / "tokenizer"),
                "checkpoints": str(ckpt_dir),
                "metrics": str(run_dir / "metrics.jsonl"),
                "curves": str(run_dir / "curves.png"),
                "samples": str(run_dir / "samples.txt"),
                "summary": str(run_dir / "summary.json"),
            },
            "samples": samples,
        }
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        _point_latest(run_dir)
    barrier()
    return RunResult(run_dir=run_dir, summary=summary)


def _point_latest(run_dir: Path) -> None:
    """`<out_dir>/latest` → the newest finished run (so `parcae generate runs/latest` always works)."""
    link, tmp = run_dir.parent / "latest", run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)  # atomic: readers see the old run or the new one, never nothing


def _max_steps(cfg: RunConfig, fpt: float, n_params: int) -> int | None:
    if cfg.train.max_time_minutes is not None:
        return None
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    if cfg.train.max_tokens is not None:
        tokens = cfg.train.max_tokens
    elif cfg.train.max_flops is not None:
        tokens = cfg.train.max_flops / fpt
    else:
        tokens = cfg.train.token_to_param_ratio * n_params
    steps = int(tokens // cfg.tokens_per_step)
    if steps < 1:
        raise ConfigError(
            f"the budget gives {tokens:.3g} tokens, less than one step of {cfg.tokens_per_step} tokens"
        )
    return steps


def _final_reserve(model, shard_dir, depths, eval_bs, cfg, token_bytes, info) -> float:
    """Seconds the end of a time-limited run needs: a timed validation batch (after an untimed warm-up one,
    which pays for allocations and tables) at every final depth x the number of validation batches, plus a
    margin for saving, samples and plots."""
    from parcae_lm.data.loader import iter_eval_batches

    n_batches = sum(1 for _ in iter_eval_batches(shard_dir, "val", eval_bs, cfg.data.seq_len))
    evaluate(model, shard_dir, depths, eval_bs, cfg.data.seq_len, token_bytes, info, max_batches=1)
    t = time.perf_counter()
    evaluate(model, shard_dir, depths, eval_bs, cfg.data.seq_len, token_bytes, info, max_batches=1)
    per_batch = time.perf_counter() - t
    return per_batch * math.ceil(n_batches / info.world_size) * 1.15 + FINAL_RESERVE_MARGIN_S


@dataclass
class _Run:
    """The fixed pieces of a training run that the step loop reads."""

    cfg: RunConfig
    model: nn.Module  # possibly wrapped (DDP / FSDP2 / compiled)
    raw: nn.Module  # the underlying LanguageModel
    optimizer: Any
    loader: Any
    info: DistInfo
    metrics: MetricsLogger | None
    ckpt_dir: Path
    compat: dict[str, Any]  # what a resumed checkpoint must agree with
    depths: list[int | None]  # evaluation depths
    shard_dir: Path
    token_bytes: torch.Tensor
    fpt: float  # model FLOPs per token
    peak: float  # measured matmul peak FLOP/s (for MFU)
    eval_bs: int


@dataclass
class _Window:
    """Training steps since the last log record: summed loss (on device), steps, tokens, start time."""

    loss: torch.Tensor
    steps: int = 0
    tokens: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, step_loss: torch.Tensor, tokens: int) -> None:
        self.loss += step_loss
        self.steps += 1
        self.tokens += tokens

    def reset(self) -> None:
        self.loss.zero_()
        self.steps, self.tokens, self.t0 = 0, 0, time.perf_counter()


def _loop(run: _Run, state: TrainerState, budget: Budget, grad_accum: int) -> None:
    cfg, model, raw, optimizer, loader, info = (
        run.cfg,
        run.model,
        run.raw,
        run.optimizer,
        run.loader,
        run.info,
    )
    metrics, ckpt_dir, shard_dir, token_bytes = run.metrics, run.ckpt_dir, run.shard_dir, run.token_bytes
    depths, compat, eval_bs = run.depths, run.compat, run.eval_bs
    from tqdm.auto import tqdm

    device = info.device
    model.train()
    params = [p for p in raw.parameters() if p.requires_grad]
    data_iter = iter(loader)
    bar = None
    if info.is_main and cfg.log.progress:
        if budget.max_steps is not None:
            bar = tqdm(total=budget.max_steps, initial=state.step, unit="step", dynamic_ncols=True)
        else:
            bar = tqdm(
                total=round(budget.train_seconds),
                initial=round(state.train_elapsed),
                unit="s",
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total}s [{elapsed}<{remaining}{postfix}]",
            )
    window = _Window(torch.zeros((), device=device))
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    last_step_s = 0.0

    def check_finite(where: str) -> None:
        bad = all_reduce_sum(nonfinite.float())
        if bad.item() > 0:
            good = ckpt.latest_checkpoint(ckpt_dir)
            raise TrainingError(
                f"non-finite loss, gradient norm or weights at step {state.step} ({where}); stopping without "
                "saving. "
                + (f"Last good checkpoint: {good}" if good else "No checkpoint was written.")
                + " Lower the learning rates or check the data."
            )

    while not budget.done(state.step, state.train_elapsed, last_step_s):
        t0 = time.perf_counter()
        progress = budget.progress(state.step, state.train_elapsed)
        optimizer.set_schedule(
            lr_factor(progress, budget.step_fraction(last_step_s), cfg.optim),
            muon_momentum(state.step, cfg.optim),
            muon_weight_decay(progress, cfg.optim),
        )
        batches = [next(data_iter) for _ in range(grad_accum)]
        track = (state.step + 1) % cfg.log.interval == 0
        step_loss, loop_stats = accumulate_gradients(
            model, batches, state.step, info, cfg.system.precision, track
        )
        state.micro_step += grad_accum
        grad_norm = _clip_grad_norm(params, cfg.train.grad_clip)
        nonfinite |= ~torch.isfinite(step_loss) | ~torch.isfinite(grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        state.step += 1
        state.tokens += cfg.tokens_per_step
        window.add(step_loss, cfg.tokens_per_step)
        t_step_end = time.perf_counter()
        last_step_s = t_step_end - t0
        state.train_elapsed += last_step_s
        if bar is not None:
            if budget.max_steps is not None:
                bar.update(1)
            else:
                bar.update(min(last_step_s, bar.total - bar.n))

        finished = budget.done(state.step, state.train_elapsed, last_step_s)
        if state.step % cfg.log.interval == 0 or finished:
            check_finite("training")
            record = _train_record(run, state, window, grad_norm, progress, loop_stats)
            if metrics is not None:
                metrics.log(record)
            if bar is not None:
                bar.set_postfix(
                    step=state.step,
                    loss=f"{record['loss']:.3f}",
                    tok_s=f"{record['tok_per_s']:.0f}",
                    refresh=False,
                )
            window.reset()
        if (state.step % cfg.eval.interval == 0) and not finished:
            check_finite("evaluation")
            t_eval = time.perf_counter()
            val = evaluate(
                model,
                shard_dir,
                depths,
                eval_bs,
                cfg.data.seq_len,
                token_bytes,
                info,
                max_batches=cfg.eval.batches,
            )
            if metrics is not None:
                metrics.log(
                    {"kind": "val", "step": state.step, **val, "eval_s": time.perf_counter() - t_eval}
                )
            window.t0 += time.perf_counter() - t_eval  # keep throughput about training only
        if state.step % cfg.checkpoint.interval == 0 or finished:
            # The update itself could have produced non-finite weights: never persist those.
            local = [
                p.to_local() if hasattr(p, "to_local") else p for p in params
            ]  # FSDP2: this rank's shard
            nonfinite |= ~torch.stack([torch.isfinite(p).all() for p in local]).all()
            check_finite("checkpoint")
            ckpt.save_checkpoint(
                ckpt_dir,
                state.step,
                unwrap(model),
                optimizer.optimizers,
                state.to_dict(),
                loader.state_dict(),
                compat,
                cfg.checkpoint.keep_last_k,
            )
        # Periodic evaluation and checkpoints spend the same wall clock as training steps: a time budget
        # counts them (the next step's progress sees it), so the whole run still ends on time.
        overhead = time.perf_counter() - t_step_end
        state.train_elapsed += overhead
        if bar is not None and budget.max_steps is None:
            bar.update(min(overhead, bar.total - bar.n))
    if bar is not None:
        bar.close()


def accumulate_gradients(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, ...]],
    step: int,
    info: DistInfo,
    precision: Precision,
    track_diagnostics: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward/backward over this rank's micro-batches of one optimizer step; returns the mean loss (on
    device) and, with `track_diagnostics`, the loop's state norm and residual of the last micro-batch.

    Each micro-loss is a mean over its tokens, so the step's gradient is the mean over micro-batches (and
    DDP averages over ranks): with equal-length rows this equals the gradient of one global batch. Depth
    sampling and the initial recurrent state are seeded by (optimizer step, row of the global batch), so
    accumulation and data parallelism also draw the recurrence depths that one big batch would.
    """
    accum = len(batches)
    device = info.device
    step_loss = torch.zeros((), device=device)
    stats: dict[str, torch.Tensor] = {}
    for micro, batch in enumerate(batches):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        doc_ids = batch[2].to(device, non_blocking=True) if len(batch) > 2 else None
        draw = TrainDraw(
            step, DepthShard(index=micro * info.world_size + info.rank, count=info.world_size * accum)
        )
        diagnostics = track_diagnostics and micro == accum - 1
        with no_grad_sync(model, last_micro=micro == accum - 1), autocast_context(precision, device):
            out = model(x, labels=y, return_logits=False, doc_ids=doc_ids, draw=draw, diagnostics=diagnostics)
        (out["loss"] / accum).backward()
        step_loss += out["loss"].detach() / accum
        if diagnostics:
            stats = {k: out[k] for k in ("state_norm", "rel_residual") if k in out}
    return step_loss, stats


def _clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if hasattr(total, "full_tensor"):  # FSDP2: DTensor norm
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def _train_record(
    run: _Run,
    state: TrainerState,
    window: _Window,
    grad_norm: torch.Tensor,
    progress: float,
    loop_stats: dict[str, torch.Tensor],
) -> dict[str, Any]:
    optimizer, raw, info = run.optimizer, run.raw, run.info
    stats = torch.stack([window.loss / max(window.steps, 1), grad_norm.float()]).float()
    all_reduce_sum(stats)
    stats /= info.world_size
    elapsed = max(time.perf_counter() - window.t0, 1e-9)
    tok_s = window.tokens / elapsed
    record: dict[str, Any] = {
        "kind": "train",
        "step": state.step,
        "tokens": state.tokens,
        "loss": stats[0].item(),
        "grad_norm": stats[1].item(),
        "tok_per_s": tok_s,
        "mfu": tok_s * run.fpt / (run.peak * info.world_size),
        "progress": progress,
        "train_s": state.train_elapsed,
        **optimizer.lrs,
    }
    if optimizer.muon is not None:
        record["muon_momentum"] = optimizer.muon.param_groups[0]["momentum"]
        record["muon_wd"] = optimizer.muon.param_groups[0]["weight_decay"]
    with torch.no_grad():
        record.update(raw.diagnostics())
    record.update({k: float(v) for k, v in loop_stats.items()})
    return record


def _full_model(model: nn.Module, raw: nn.Module, mcfg, strategy: Strategy) -> nn.Module | None:
    """The unsharded model on rank 0 (a plain copy for FSDP, the module itself otherwise); a collective."""
    if strategy != Strategy.fsdp or not (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    ):
        return raw
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:  # cpu_offload gathers the full state on rank 0 only
        return None
    full = build_model(mcfg)
    full.load_state_dict(sd)
    return full


@torch.no_grad()
def write_samples(model: nn.Module, tokenizer, cfg: RunConfig, path: Path) -> list[dict[str, str]]:
    """Sample a continuation of each prompt (seeded) and write them to samples.txt."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i, prompt in enumerate(cfg.sample.prompts):
        ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]  # as in training: documents start with BOS
        gen = torch.Generator(device=device).manual_seed(cfg.seed + i)
        x = torch.tensor([ids], dtype=torch.long, device=device)
        y = model.generate(
            x,
            max_new_tokens=cfg.sample.tokens,
            temperature=cfg.sample.temperature,
            top_k=None,
            generator=gen,
            eos_id=tokenizer.eos_id,
        )
        out.append({"prompt": prompt, "text": prompt + tokenizer.decode(y[0, len(ids) :].tolist())})
    model.train(was_training)
    text = "".join(
        f"=== {s['prompt']!r} (temperature {cfg.sample.temperature}) ===\n{s['text']}\n\n" for s in out
    )
    atomic_write_text(path, text)
    return out


class _Printer:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(msg)
