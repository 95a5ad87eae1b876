"""A training shuffle that can stop and resume anywhere: the order is a function of (seed, epoch)
only, and the sampler can start mid-epoch, so a killed run resumed from a mid-epoch checkpoint
sees the very batches the uninterrupted run saw (``dhr/callbacks/exact_resume.py``).

Indices are yielded as ``epoch * n + i``: the dataset reads item ``i`` and seeds its augmentation
from the whole number, so every item of every epoch has its own random draws, wherever it is
loaded (main process or worker) and whenever (before or after a restart).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffle(Sampler[int]):
    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = int(n), int(seed)
        self.epoch = 0
        self.resume: tuple[int, int] | None = None  # (epoch, items done): skipped once, in that epoch

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every epoch."""
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self.resume is not None and self.resume[0] == self.epoch:
            start = self.resume[1]
        self.resume = None
        base = self.epoch * self.n
        return iter([base + i for i in self.order()[start:]])

    def __len__(self) -> int:
        return self.n
