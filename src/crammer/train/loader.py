"""Background-prefetched, resumable, DDP-sharded stream of masked micro-batches.

The stream is a sequence of *global* micro-batches k = 0, 1, 2, ... of `micro_batch * world_size`
sequences each; rank r takes rows [r * micro_batch, (r + 1) * micro_batch). Batch k's sequences and
its masking depend only on (seed, k), so
- a resumed run that restarts at position k sees exactly the batches the uninterrupted run saw, and
- N ranks with micro-batch b see exactly what one process with micro-batch N*b sees.
Sequences are read in stored order (the order `cram data prepare` chose) or reshuffled every epoch.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np
import torch

from crammer.data import PackedCorpus
from crammer.errors import CrammerError
from crammer.train.masking import MaskedBatch, MLMCollator


class BatchStream:
    """Iterator of this rank's MaskedBatch; `position` counts the global micro-batches consumed."""

    def __init__(
        self,
        corpus: PackedCorpus,
        collator: MLMCollator,
        micro_batch: int,
        *,
        order: str = "stored",
        seed: int = 0,
        position: int = 0,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 4,
        pin_memory: bool = False,
        mask_fraction: Callable[[int], float] | None = None,
    ):
        self.corpus = corpus
        self.mask_fraction = mask_fraction  # global micro-batch k -> masking fraction (a MaskingSchedule)
        self.collator = collator
        self.micro_batch = micro_batch
        self.global_batch = micro_batch * world_size
        self.batches_per_epoch = len(corpus) // self.global_batch
        if self.batches_per_epoch == 0:
            raise CrammerError(
                f"{corpus.path}: {len(corpus)} sequences are fewer than one global micro-batch "
                f"({micro_batch} x {world_size} ranks); prepare more data or lower batch.micro_batch"
            )
        self.order = order
        self.seed = seed
        self.rank = rank
        self.pin_memory = pin_memory
        self.position = position
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(position,), daemon=True, name="crammer-loader")
        self._thread.start()

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self.order == "stored":
            return np.arange(len(self.corpus), dtype=np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.corpus))

    def make_batch(self, k: int, epoch_order: np.ndarray | None = None) -> MaskedBatch:
        """This rank's share of global micro-batch k (a pure function of k); only that share is read and masked."""
        epoch, j = divmod(k, self.batches_per_epoch)
        if epoch_order is None:
            epoch_order = self._epoch_order(epoch)
        first = j * self.global_batch + self.rank * self.micro_batch
        tokens = torch.from_numpy(self.corpus.get_batch(epoch_order[first : first + self.micro_batch]))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        fraction = self.mask_fraction(k) if self.mask_fraction is not None else None
        batch = self.collator(tokens, generator, first_row=self.rank * self.micro_batch, batch_rows=self.global_batch,
                              fraction=fraction)
        return batch.pin_memory() if self.pin_memory else batch

    def _produce(self, k: int) -> None:
        epoch, epoch_order = -1, None
        try:
            while not self._stop.is_set():
                if k // self.batches_per_epoch != epoch:  # one permutation per epoch, not per batch
                    epoch = k // self.batches_per_epoch
                    epoch_order = self._epoch_order(epoch)
                item = self.make_batch(k, epoch_order)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                k += 1
        except BaseException as e:  # surfaced to the training thread on its next read
            self._queue.put(e)

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> MaskedBatch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.position += 1
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
