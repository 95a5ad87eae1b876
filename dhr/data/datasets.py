"""Torch datasets over a :class:`~dhr.data.layout.DatasetLayout` split."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dhr.data.layout import DatasetLayout
from dhr.data.transforms import Compose, Geometry
from dhr.errors import DHRError
from dhr.utils.io import read_rgb

log = logging.getLogger(__name__)


def open_label(path: Path) -> Image.Image:
    """Open a label PNG lazily as a PIL index image, with a clear error for bad files."""
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DHRError(f"{path}: mask file not found") from None
    except (OSError, SyntaxError) as err:
        raise DHRError(f"{path}: cannot decode mask ({err})") from None
    if image.mode not in ("P", "L"):
        raise DHRError(f"{path}: mask has mode {image.mode!r}; label PNGs must be index images (P or L)")
    return image


class SegmentationDataset(Dataset):
    """Image + label maps (+ tags) per id; items are dicts of tensors ready for collation.

    ``mask_dirs`` maps output keys to folders of ``{id}.png`` (``mask`` = GT or pseudo mask).
    """

    def __init__(
        self,
        layout: DatasetLayout,
        split: str,
        *,
        transform: Compose,
        ids: Sequence[str] | None = None,
        mask_dirs: Mapping[str, Path] | None = None,
        tags: Mapping[str, Sequence[int]] | None = None,
        uss_dir: Path | None = None,
        uss_patch: int = 14,
        uss_dim: int | None = None,
        on_error: str = "fail",
        reseed: int | None = None,
    ) -> None:
        self.layout = layout
        self.on_error = on_error  # skip: a file that fails to load is logged and the next item served
        self.reseed = reseed  # training: seed each item's random draws from (reseed, epoch, index)
        self.split = split
        self.image_paths = layout.image_paths(split)
        self.ids = list(ids) if ids is not None else list(self.image_paths)
        self.transform = transform
        self.mask_dirs = dict(mask_dirs or {})
        self.tags = tags
        self.uss_dir, self.uss_patch, self.uss_dim = (Path(uss_dir) if uss_dir else None), int(uss_patch), uss_dim

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The item; with ``on_error=skip`` a broken file is logged and the next good item served instead.

        An index past the split (``epoch * len + i``, from :class:`~dhr.data.sampler.EpochShuffle`)
        is item ``i``; with ``reseed`` the random draws of its augmentation depend on it alone.
        """
        if self.reseed is not None:
            seed = (self.reseed * 1_000_003 + index) % 2**32
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        index %= len(self.ids)
        for step in range(len(self.ids)):
            try:
                return self._item((index + step) % len(self.ids))
            except DHRError as err:
                if self.on_error != "skip":
                    raise
                log.warning("data.on_error=skip: %s", err)
        raise DHRError(f"{self.layout.split_dir(self.split)}: no item of this split could be read")

    def _item(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = read_rgb(self.image_paths[image_id])
        masks = {}
        for key, folder in self.mask_dirs.items():
            path = Path(folder) / f"{image_id}.png"
            mask = open_label(path)
            if mask.size != image.size:
                raise DHRError(f"{path}: mask is {mask.size} but image is {image.size} (WxH)")
            masks[key] = mask
        geometry = Geometry(orig_hw=(image.height, image.width))
        sample = self.transform({"image": image, "masks": masks, "geometry": geometry})
        out: dict[str, Any] = {
            "id": image_id,
            "image": torch.from_numpy(np.ascontiguousarray(sample["image"].transpose(2, 0, 1))),
            "crop_box": torch.tensor(geometry.crop_box, dtype=torch.long),
            "orig_hw": torch.tensor(geometry.orig_hw, dtype=torch.long),
            "flipped": torch.tensor(geometry.flipped),
        }
        for key, m in sample["masks"].items():
            out[key] = torch.from_numpy(m.astype(np.int64))
        if self.uss_dir is not None:
            from dhr.data.uss import load_uss, uss_on_grid, working_grid

            feat = load_uss(self.uss_dir / f"{image_id}.pt", geometry.orig_hw, self.uss_patch, self.uss_dim)
            out["uss"], out["uss_valid"] = uss_on_grid(feat, geometry, working_grid(geometry.canvas_hw[0], self.uss_patch))
        if self.tags is not None:
            out["tags"] = torch.from_numpy(self.layout.info.multi_hot(self.tags[image_id]))
        return out


def pad_collate(batch: Sequence[dict[str, Any]], ignore_index: int = 255) -> dict[str, Any]:
    """Collate images of different sizes: pad to the largest (image 0, masks ``ignore_index``)."""
    h = max(item["image"].shape[1] for item in batch)
    w = max(item["image"].shape[2] for item in batch)
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key == "image":
            stacked = values[0].new_zeros((len(values), values[0].shape[0], h, w))
            for i, v in enumerate(values):
                stacked[i, :, : v.shape[1], : v.shape[2]] = v
            out[key] = stacked
        elif isinstance(values[0], torch.Tensor) and values[0].ndim == 2:
            stacked = values[0].new_full((len(values), h, w), ignore_index)
            for i, v in enumerate(values):
                stacked[i, : v.shape[0], : v.shape[1]] = v
            out[key] = stacked
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
