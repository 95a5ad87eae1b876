"""Training and validation samplers that mean the same on one process and on many.

:class:`EpochShuffle` makes a training order that is a function of (seed, epoch) only and can
start mid-epoch, so a killed run resumed from a mid-epoch checkpoint sees the very batches the
uninterrupted run saw (``dhr/callbacks/exact_resume.py``). Under DDP every rank draws the same
global order and reads its contiguous share of each global batch: step k of a 2-process run
trains on the images of step k of the 1-process run with the same global batch.

Indices are yielded as ``epoch * n + i``: the dataset reads item ``i`` and seeds its augmentation
from the whole number, so every item of every epoch has its own random draws, wherever it is
loaded (main process, worker or rank) and whenever (before or after a restart).

Both samplers subclass ``DistributedSampler`` only so that Lightning keeps them as they are
instead of wrapping them in its own (which would reshuffle, and pad validation with repeats).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler


class EpochShuffle(DistributedSampler):
    def __init__(self, n: int, seed: int, *, batch_size: int = 1, rank: int = 0, world: int = 1) -> None:
        # DistributedSampler.__init__ is not called: it needs a process group, and none of its state is used
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} processes")
        self.n, self.seed, self.batch_size, self.rank, self.world = int(n), int(seed), int(batch_size), rank, world
        self.epoch = 0
        self.resume: tuple[int, int] | None = None  # (epoch, items of this rank done): skipped once, in that epoch

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every epoch."""
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """The global order of this epoch: the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def share(self, order: list[int]) -> list[int]:
        """This rank's items: its contiguous slice of every whole global batch (the rest is dropped)."""
        if self.world == 1:
            return order
        per_rank = self.batch_size // self.world
        return [order[start + self.rank * per_rank + j]
                for start in range(0, len(order) - self.batch_size + 1, self.batch_size) for j in range(per_rank)]

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self.resume is not None and self.resume[0] == self.epoch:
            start = self.resume[1]
        self.resume = None
        base = self.epoch * self.n
        return iter([base + i for i in self.share(self.order())[start:]])

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        return self.n // self.batch_size * (self.batch_size // self.world)


class EvalShard(DistributedSampler):
    """Rank r of w evaluates items r, r + w, ...: every item once, none repeated to even out the ranks.

    Metric states (confusion matrices) are summed over ranks and every image is scored at its own
    size (``dhr.ops.inference.labels_per_size``), so the score is the 1-process score.
    """

    def __init__(self, n: int, *, rank: int, world: int) -> None:
        self.n, self.rank, self.world = int(n), rank, world

    def set_epoch(self, epoch: int) -> None:
        """The order never changes."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))
