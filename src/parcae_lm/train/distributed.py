"""torchrun / Slurm process-group setup and model wrapping (DDP or FSDP2).

Launch with `torchrun --nproc_per_node N -m parcae_lm train ...`: the rank/world come from the
environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT). gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from parcae_lm.config.train import Strategy
from parcae_lm.errors import ConfigError
from parcae_lm.model.layers import Block


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None) -> DistInfo:
    """Join the torchrun process group if there is one, and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but CUDA is not available")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, strategy: Strategy, info: DistInfo) -> nn.Module:
    """Return the module to call for training (DDP / FSDP2-sharded / the model itself)."""
    if not info.enabled:
        return model
    if strategy == Strategy.fsdp:
        # Shard each prelude/coda (or GPT) block on its own; the recurrent core blocks stay in the root
        # group with the embeddings, injection and head. The core runs a sampled number of iterations
        # that differs between ranks, and a separately sharded module would then issue a different
        # number of all-gathers on each rank; in the root group it is gathered once per step.
        core = {id(b) for b in getattr(getattr(model, "transformer", None), "core_block", [])}
        for module in list(model.modules()):
            if isinstance(module, Block) and id(module) not in core:
                fully_shard(module)
        fully_shard(model)
        return model
    # Parameters untouched by a micro-batch (a value-embedding table feeding a no-grad iteration, a GPT
    # without value-embedding gates on some layer) must not stall the all-reduce.
    return DDP(
        model,
        device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def no_grad_sync(model: nn.Module, last_micro: bool) -> AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if isinstance(model, DDP) and not last_micro:
        return model.no_sync()
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(last_micro)
    return nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "_orig_mod", model)  # torch.compile
    if isinstance(inner, DDP):
        inner = inner.module
    return getattr(inner, "_orig_mod", inner)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj):
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
