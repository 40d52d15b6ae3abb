"""One process, or one rank of a `torchrun` job (PyTorch DDP: nccl on GPUs, gloo on CPUs)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False  # this process group is ours to destroy

    @classmethod
    def from_env(cls) -> "Distributed":
        """Single process, or the `torchrun` environment (WORLD_SIZE, LOCAL_RANK)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        if world_size == 1:
            return cls(device=device)
        here = not dist.is_initialized()
        if here:
            dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
        return cls(dist.get_rank(), dist.get_world_size(), device, here)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def min_over_ranks(self, value: int) -> int:
        """The smallest of every rank's `value` (all ranks must call it)."""
        return int(self._reduce(value, dist.ReduceOp.MIN)) if self.world_size > 1 else value

    def max_over_ranks(self, value: float) -> float:
        """The largest of every rank's `value`: a duration every rank then agrees on (all ranks must call it)."""
        return float(self._reduce(value, dist.ReduceOp.MAX)) if self.world_size > 1 else value

    def _reduce(self, value: float, op) -> float:
        tensor = torch.tensor([value], device=self.device, dtype=torch.float64)
        dist.all_reduce(tensor, op=op)
        return tensor.item()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.initialized_here:
            dist.destroy_process_group()
