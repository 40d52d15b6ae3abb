"""One process, or one rank of a `torchrun` job on one or several machines (PyTorch DDP: nccl on GPUs, gloo on
CPUs), and what the ranks of a job must agree on before they train: the run folder is one folder they all see,
and a problem any rank meets at start-up stops every rank with the same line (a rank that left alone would leave
the others waiting at their next collective)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from crammer.errors import CrammerError
from crammer.io import exclusive_folder

_STORE_KEY = "crammer/process-group-store"  # in torchrun's agent store: "PORT TOKEN" of this group's own store
_PROBE_TIMEOUT = timedelta(seconds=5)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False  # this process group is ours to destroy

    @classmethod
    def from_env(cls) -> "Distributed":
        """Single process, or the `torchrun` environment (WORLD_SIZE, RANK, LOCAL_RANK); a process group already
        set up (by an outer `pretrain` or `run`) is joined, not made again."""
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
            rank = int(os.environ["RANK"])
            store = _group_store(rank, world_size) if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else None
            dist.init_process_group(backend="nccl" if cuda else "gloo", store=store, rank=rank,
                                    world_size=world_size, device_id=device if cuda else None)
        return cls(dist.get_rank(), dist.get_world_size(), device, here)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def where(self) -> str:
        """This rank as a message names it: host and rank."""
        return f"{socket.gethostname()} (rank {self.rank})"

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

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), by rank, on every rank (all ranks must call it)."""
        if self.world_size == 1:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """A start-up step every rank runs: a CrammerError on any rank is raised on every rank, with the first
        failing rank's message (naming its host when there are several ranks). The step itself must not use
        collectives (a rank that failed half-way would leave the others waiting in one)."""
        problem = None
        try:
            yield
        except CrammerError as e:
            if self.world_size == 1:
                raise
            problem = f"{self.where}: {e}"
        self.stop_if_any(problem)

    def stop_if_any(self, problem: str | None) -> None:
        """Raise the first rank's problem on every rank, if any rank has one (all ranks must call it)."""
        first = next((p for p in self.gather(problem) if p is not None), None)
        if first is not None:
            raise CrammerError(first)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this object made it (once; the ranks and device stay known)."""
        if self.initialized_here:
            dist.destroy_process_group()
            self.initialized_here = False


def _group_store(rank: int, world_size: int) -> dist.Store:
    """A store of this worker group's own for its process group, where torchrun shares its agent's store.

    The agent's store (MASTER_ADDR:MASTER_PORT) outlives a restart (`--max-restarts`) and still holds what the dead
    group's ranks wrote for their process group (their gloo/NCCL addresses): restarted workers that read those
    connect to dead ports and hang or fail in `init_process_group` (pytorch/pytorch#135712). So global rank 0 (on
    MASTER_ADDR's machine) starts a fresh store and publishes its port and a random token in the agent's store;
    another rank takes the published store once it answers with that token (an entry a dead group left names a
    closed port, or a port since reused by a store with another token).
    """
    host, timeout = os.environ["MASTER_ADDR"], default_pg_timeout
    agent = dist.TCPStore(host, int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timeout)
    if rank == 0:
        # port 0: any free one; the others connect once they read it, so no waiting for them here
        store = dist.TCPStore(host, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        token = secrets.token_hex(16)
        store.set("token", token)
        agent.set(_STORE_KEY, f"{store.port} {token}")
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while time.monotonic() < deadline:
        port, token = agent.get(_STORE_KEY).decode().split()  # waits for rank 0's first entry
        try:
            store = dist.TCPStore(host, int(port), world_size, is_master=False, timeout=_PROBE_TIMEOUT)
            if store.get("token").decode() == token:
                store.set_timeout(timeout)
                return store
        except RuntimeError:  # a closed port, or not our store (DistError is a RuntimeError)
            pass
        time.sleep(0.5)
    raise CrammerError(f"{socket.gethostname()} (rank {rank}): global rank 0 published no process-group store at "
                       f"{host} within {timeout}; is rank 0 running?")


def _marker(folder: Path, token: str, rank: int) -> Path:
    return folder / f".crammer-rank-{rank}-{token}"


def ranks_sharing(folder: Path, job: Distributed, create: bool = False) -> list[int]:
    """The ranks that see the same `folder` as this rank does, on every rank (all ranks must call it): each writes
    a marker named by its rank and a token of this job's, each lists the markers it finds. Global rank 0 creates
    the folder; with `create` every rank does (a node-local folder then holds that node's ranks)."""
    if job.world_size == 1:
        return [0]
    token = secrets.token_hex(16) if job.is_main else None
    with job.together():
        if job.is_main or create:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CrammerError(f"cannot create {folder} ({e.strerror or e})") from None
    token = job.gather(token)[0]  # rank 0's folder exists from here on
    mine = _marker(folder, token, job.rank)
    if folder.is_dir():
        with contextlib.suppress(OSError):  # a rank that cannot write there may still see rank 0's marker
            mine.write_text(token)
    job.barrier()  # every marker is written
    try:
        seen = sorted(rank for rank in range(job.world_size) if _marker(folder, token, rank).is_file())
        job.barrier()  # every rank has looked
    finally:
        with contextlib.suppress(OSError):
            mine.unlink()
    return seen


def check_shared_folder(folder: Path, job: Distributed) -> None:
    """Every rank must see the run folder global rank 0 writes checkpoints, metrics and final/ to; a rank that
    does not stops every rank, naming its host, before any training."""
    seen = ranks_sharing(folder, job)
    with job.together():
        if 0 not in seen:
            raise CrammerError(f"does not see the run folder {folder} as rank 0 does; put RUN_DIR on storage all "
                               "nodes share, e.g. NFS/Lustre")


@contextlib.contextmanager
def shared_run_folder(folder: str | Path, job: Distributed) -> Iterator[Path]:
    """Hold the run folder for this job: global rank 0 takes its lock (one job per folder), and every rank must
    see it (`check_shared_folder`). Either problem stops every rank with one line."""
    folder = Path(folder)
    with contextlib.ExitStack() as stack:
        with job.together():
            if job.is_main:
                stack.enter_context(exclusive_folder(folder, "run folder"))
        check_shared_folder(folder, job)
        yield folder
