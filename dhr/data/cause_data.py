"""CAUSE inputs: crop views of each training image, square-resized, no augmentation (``cause-method.md`` §4).

Project choice: crops are cut on the fly from the source pixels instead of the release's offline
JPEG (quality 75) files; the crop geometry is the release's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from dhr.data.datasets import open_label
from dhr.data.layout import DatasetInfo, DatasetLayout
from dhr.data.sampler import EpochShuffle, EvalShard
from dhr.data.sources import ensure_dataset
from dhr.errors import DHRError
from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD
from dhr.utils.io import read_rgb

CROP_RATIOS = {"none": (), "five": (0.5,), "double": (0.5, 0.8), "super": (0.3, 0.4, 0.5, 0.6, 0.7)}
INTERP = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def crop_boxes(h: int, w: int, crop_type: str) -> list[tuple[int, int, int, int, bool]]:
    """(y0, x0, y1, x1, flip) views: ``five`` = 4 corners + centre; others ten-crop (five + flips) per ratio."""
    if crop_type not in CROP_RATIOS:
        raise DHRError(f"cause crop_type={crop_type!r}: use one of {sorted(CROP_RATIOS)}")
    if crop_type == "none":
        return [(0, 0, h, w, False)]
    boxes = []
    for r in CROP_RATIOS[crop_type]:
        ch, cw = max(1, int(h * r)), max(1, int(w * r))
        five = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
        flips = (False,) if crop_type == "five" else (False, True)
        boxes += [(y, x, y + ch, x + cw, f) for f in flips for y, x in five]
    return boxes


class CauseViews(Dataset):
    """Each (image, crop view) pair resized to ``resolution`` squared; labels (monitoring only) nearest."""

    def __init__(self, layout: DatasetLayout, split: str, *, crop_type: str, resolution: int,
                 image_interp: str = "nearest", with_labels: bool = True) -> None:
        self.layout, self.split = layout, split
        self.paths = layout.image_paths(split)
        self.ids = list(self.paths)
        self.crop_type, self.resolution = crop_type, resolution
        self.n_views = len(crop_boxes(100, 100, crop_type))
        if image_interp not in INTERP:
            raise DHRError(f"data.image_interp={image_interp!r}: use one of {sorted(INTERP)}")
        self.interp = INTERP[image_interp]
        self.with_labels = with_labels and layout.mask_dir(split).is_dir()

    def __len__(self) -> int:
        return len(self.ids) * self.n_views

    def __getitem__(self, index: int) -> dict[str, Any]:
        index %= len(self)  # EpochShuffle yields epoch * len + i
        image_id = self.ids[index // self.n_views]
        image = read_rgb(self.paths[image_id])
        y0, x0, y1, x1, flip = crop_boxes(image.height, image.width, self.crop_type)[index % self.n_views]
        size = (self.resolution, self.resolution)
        view = image.crop((x0, y0, x1, y1)).resize(size, self.interp)
        if flip:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        arr = (np.asarray(view, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        out: dict[str, Any] = {"id": image_id, "image": torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32))}
        if self.with_labels:
            label = open_label(self.layout.mask_path(self.split, image_id)).crop((x0, y0, x1, y1)).resize(size, Image.NEAREST)
            if flip:
                label = label.transpose(Image.FLIP_LEFT_RIGHT)
            out["label"] = torch.from_numpy(np.asarray(label, dtype=np.int64))
        return out


class CauseDataModule(pl.LightningDataModule):
    def __init__(self, *, data_root: str, dataset: Mapping[str, Any], train_split: str, val_split: str | None,
                 crop_type: str, resolution: int, batch_size: int, num_workers: int, image_interp: str,
                 seed: int = 0) -> None:
        super().__init__()
        self.dataset_cfg = dict(dataset)
        self.info = DatasetInfo.from_cfg(self.dataset_cfg)
        self.layout = DatasetLayout(data_root, self.info)
        self.train_split, self.val_split = train_split, val_split
        self.crop_type, self.resolution, self.image_interp = crop_type, int(resolution), image_interp
        self.batch_size, self.num_workers = int(batch_size), min(int(num_workers), os.cpu_count() or 1)
        self.seed = int(seed)

    def prepare_data(self) -> None:
        ensure_dataset(self.layout.data_root, self.dataset_cfg)

    def setup(self, stage: str | None = None) -> None:
        self.layout.validate(self.train_split, masks=False)
        self.data_train = CauseViews(self.layout, self.train_split, crop_type=self.crop_type,
                                     resolution=self.resolution, image_interp=self.image_interp)
        self.data_val = None
        if self.val_split:
            self.layout.validate(self.val_split)
            self.data_val = CauseViews(self.layout, self.val_split, crop_type="none", resolution=self.resolution,
                                       image_interp=self.image_interp)

    def _world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def _loader(self, data: Dataset, sampler: Sampler, drop_last: bool) -> DataLoader:
        return DataLoader(data, batch_size=max(1, self.batch_size // self._world()[1]), sampler=sampler,
                          drop_last=drop_last, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        """The order of :class:`EpochShuffle`: a 2-process run trains on the views of the 1-process run."""
        rank, world = self._world()
        per_rank = max(1, self.batch_size // world)
        sampler = EpochShuffle(len(self.data_train), self.seed, batch_size=per_rank * world, rank=rank, world=world)
        return self._loader(self.data_train, sampler, drop_last=True)

    def report_dataloader(self) -> DataLoader | list:
        """The whole val split in one process (the report after fit: under ``ddp_spawn`` this process
        never ran ``setup``, and its trainer still counts the spawned ranks)."""
        if not hasattr(self, "data_val"):
            self.setup("validate")
        if self.data_val is None:
            return []
        return self._loader(self.data_val, SequentialSampler(self.data_val), drop_last=False)

    def val_dataloader(self) -> DataLoader | list:
        if self.data_val is None:
            return []
        rank, world = self._world()
        sampler = EvalShard(len(self.data_val), rank=rank, world=world) if world > 1 else SequentialSampler(self.data_val)
        return self._loader(self.data_val, sampler, drop_last=False)
