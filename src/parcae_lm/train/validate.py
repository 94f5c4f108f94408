"""Validation during and after training: loss and bits per byte at each depth, on all ranks.

Per-batch accounting is `parcae_lm.eval.bpb.batch_sums` (documents masked to themselves, special-token
targets not scored), so these numbers are the ones `parcae eval bpb` reports for the same shards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from parcae_lm.config import ModelConfig
from parcae_lm.config.train import EvalArgs
from parcae_lm.data.loader import iter_eval_batches
from parcae_lm.errors import TrainingError
from parcae_lm.eval.bpb import batch_sums
from parcae_lm.train.distributed import DistInfo, all_reduce_sum, unwrap

Depths = list[int | None]  # None: the model's own depth (GPT, or Parcae at its mean recurrence)


def eval_depths(cfg: EvalArgs, mcfg: ModelConfig, final: bool = False) -> Depths:
    """Validation depths: the configured ones plus the mean recurrence (Parcae); [None] for GPT."""
    if not mcfg.is_parcae:
        return [None]
    chosen = cfg.final_depths if final and cfg.final_depths is not None else cfg.depths
    return sorted(set(chosen) | {int(mcfg.mean_recurrence)})


@dataclass(frozen=True)
class Validator:
    """The validation split of `shard_dir`, read in batches of `batch_size` x `seq_len`, sharded
    round-robin over the ranks of `info` and summed across them."""

    shard_dir: Path
    batch_size: int
    seq_len: int
    token_bytes: torch.Tensor
    info: DistInfo

    @torch.no_grad()
    def __call__(self, model: nn.Module, depths: Depths, max_batches: int | None) -> dict[str, float]:
        """{"loss_d<depth>": nats per scored token, "bpb_d<depth>": bits per byte} ("loss"/"bpb" for
        GPT) over the split, or its first `max_batches` batches."""
        model = _eval_module(model)
        was_training = model.training
        model.eval()
        results: dict[str, float] = {}
        for depth in depths:
            nats, tokens, nbytes = self._sums(model, depth, max_batches)
            if tokens == 0 or nbytes == 0:
                raise TrainingError(f"validation split 'val' in {self.shard_dir} has no scored tokens")
            suffix = "" if depth is None else f"_d{depth}"
            results[f"loss{suffix}"] = nats / tokens
            results[f"bpb{suffix}"] = nats / math.log(2) / nbytes
        model.train(was_training)
        return results

    def _sums(self, model: nn.Module, depth: int | None, max_batches: int | None) -> list[float]:
        info = self.info
        totals = torch.zeros(3, dtype=torch.float64)  # nats, scored tokens, bytes
        n_local, n_seen, first = 0, 0, None
        for i, batch in enumerate(self._batches()):
            if max_batches is not None and i >= max_batches:
                break
            n_seen += 1
            first = batch if first is None else first
            if i % info.world_size == info.rank:
                totals += torch.tensor(batch_sums(model, batch, self.token_bytes, depth), dtype=torch.float64)
                n_local += 1
        # A sharded (FSDP) model needs every rank in every forward: short ranks run discarded batches.
        for _ in range(math.ceil(n_seen / info.world_size) - n_local):
            batch_sums(model, first, self.token_bytes, depth)
        return all_reduce_sum(totals.to(info.device)).cpu().tolist()

    def _batches(self):
        return iter_eval_batches(self.shard_dir, "val", self.batch_size, self.seq_len, with_doc_ids=True)

    def seconds_for_full_split(self, model: nn.Module, depths: Depths) -> float:
        """An estimate of a whole-split evaluation: one timed batch per depth (after an untimed warm-up
        batch, which pays for allocations and tables) times the batches each rank evaluates, plus 15%."""
        n_batches = sum(1 for _ in self._batches())
        self(model, depths, max_batches=1)
        t = time.perf_counter()
        self(model, depths, max_batches=1)
        per_batch = time.perf_counter() - t
        return per_batch * math.ceil(n_batches / self.info.world_size) * 1.15


def _eval_module(model: nn.Module) -> nn.Module:
    # DDP adds collectives (buffer broadcast) to every forward; evaluation needs none, so use the module.
    inner = unwrap(model)
    return model if isinstance(inner, FSDPModule) else inner  # FSDP2 must stay sharded
