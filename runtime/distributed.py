"""Several processes through torchrun: one per device, DistributedDataParallel.

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK and the rendezvous address; we
use gloo on CPU and NCCL on GPU. Every rank walks the same global batch
order and takes its slice of each global batch, so with gradients averaged
by DDP one step equals a single-process step on the whole global batch, for
networks without batch norm and for losses that are means over samples.

Where it differs from one process (measured on 2 CPU processes):
- BatchNorm normalises each rank's slice and keeps per-rank running statistics
  (no SyncBatchNorm), so each rank would measure a slightly different validation
  loss; every rank takes rank 0's figures (the checkpoint holds rank 0's
  statistics), so a plateau schedule and the choice of best.pt agree across
  ranks, and they differ slightly from a single-process run;
- the logged training loss is rank 0's slice, not the global batch's;
- pairwise losses (contrastive, triplet) only pair samples within a slice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: torch.device) -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_values(world: World, values: list[float]) -> list[float]:
    """Rank 0's numbers on every rank. The tensor lives where the backend can send it:
    NCCL only moves CUDA tensors, gloo CPU ones."""
    if not world.distributed:
        return values
    device = (
        torch.device("cuda", world.local_rank)
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, 0)
    return tensor.tolist()


def broadcast_flag(world: World, flag: bool) -> bool:
    """Rank 0's value of `flag` on every rank (e.g. 'stop: the loss diverged')."""
    if not world.distributed:
        return flag
    return broadcast_values(world, [1.0 if flag else 0.0])[0] != 0.0
