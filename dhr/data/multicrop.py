"""DINO's multi-crop views of the training images: global and local random crops, never a label.

Each image gives ``global_crops`` large crops (the teacher's and the student's) and
``local_crops`` small ones (the student's), each with a flip and colour augmentation
(torchvision). An item's draws come from (seed, epoch * n + i) as in :mod:`dhr.data.sampler`, so
a resumed run sees the crops the uninterrupted run saw. Only image files are listed and read:
no mask, tag or label of the dataset reaches the USS stage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from dhr.data.layout import DatasetInfo, DatasetLayout
from dhr.data.sampler import EpochShuffle
from dhr.data.sources import ensure_dataset
from dhr.errors import DHRError
from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD
from dhr.utils.io import read_rgb


def crop_transform(size: int, scale: Sequence[float], jitter: Sequence[float], jitter_p: float,
                   grayscale_p: float) -> v2.Compose:
    """Random resized crop, flip, colour jitter (probability ``jitter_p``), grey scale, ImageNet normalisation."""
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise DHRError(f"data.views scale={list(scale)}: use [low, high] with 0 < low <= high <= 1")
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(int(size), scale=tuple(scale), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p),
        v2.RandomGrayscale(p=grayscale_p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
    ])


class MultiCropViews(Dataset):
    def __init__(self, layout: DatasetLayout, split: str, *, seed: int, global_crops: int, global_size: int,
                 global_scale: Sequence[float], local_crops: int, local_size: int, local_scale: Sequence[float],
                 jitter: Sequence[float], jitter_p: float, grayscale_p: float) -> None:
        self.paths = layout.image_paths(split)
        self.ids = list(self.paths)
        if not self.ids:
            raise DHRError(f"{layout.info.name} split {split!r}: no images for DINO pre-training")
        self.seed = int(seed)
        self.counts = (int(global_crops), int(local_crops))
        self.global_t = crop_transform(global_size, global_scale, jitter, jitter_p, grayscale_p)
        self.local_t = crop_transform(local_size, local_scale, jitter, jitter_p, grayscale_p)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index % len(self.ids)]  # EpochShuffle yields epoch * len + i
        image = read_rgb(self.paths[image_id])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + int(index))
            crops = [self.global_t(image) for _ in range(self.counts[0])]
            crops += [self.local_t(image) for _ in range(self.counts[1])]
        return {"id": image_id, "crops": crops}


class MultiCropDataModule(pl.LightningDataModule):
    def __init__(self, *, data_root: str, dataset: Mapping[str, Any], train_split: str, batch_size: int,
                 num_workers: int, seed: int, views: Mapping[str, Any]) -> None:
        super().__init__()
        self.dataset_cfg = dict(dataset)
        self.info = DatasetInfo.from_cfg(self.dataset_cfg)
        self.layout = DatasetLayout(data_root, self.info)
        self.train_split, self.val_split = train_split, None
        self.batch_size, self.num_workers = int(batch_size), min(int(num_workers), os.cpu_count() or 1)
        self.seed, self.views = int(seed), dict(views)

    def prepare_data(self) -> None:
        ensure_dataset(self.layout.data_root, self.dataset_cfg)

    def setup(self, stage: str | None = None) -> None:
        self.layout.validate(self.train_split, masks=False)
        self.data_train = MultiCropViews(self.layout, self.train_split, seed=self.seed, **self.views)

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        per_rank = max(1, self.batch_size // world)
        sampler = EpochShuffle(len(self.data_train), self.seed, batch_size=per_rank * world, rank=rank, world=world)
        return DataLoader(self.data_train, batch_size=per_rank, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())
