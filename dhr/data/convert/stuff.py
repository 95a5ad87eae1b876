"""COCO-Stuff-164k (``stuffthingmaps_trainval2017``) -> ``COCO-Stuff/{train,validation}``, 171 classes.

A label PNG holds COCO id - 1: things 0..89 (80 used; 11, 25, 28, 29, 44, 65, 67, 68, 70, 82 and
90 are unused ids), stuff 91..181, 255 unlabeled. The 171 used values are numbered in order,
things first, as ``dataset.classes`` lists them. Tags: the classes present in the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dhr.data.convert.common import Plan, find_root, select_splits
from dhr.data.convert.remap import lookup_table, pairs_plan, remap_png

OFFICIAL_SIZES = {"train": 118287, "validation": 5000}
UNUSED_THING_VALUES = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82)
USED_VALUES = [v for v in range(90) if v not in UNUSED_THING_VALUES] + list(range(91, 182))
TABLE = lookup_table({raw: i for i, raw in enumerate(USED_VALUES)})


def read_mask(source: Path) -> np.ndarray:
    return remap_png(source, TABLE)


FOLDERS = {"train": "train2017", "validation": "val2017"}


def plan(src: Path, splits: list[str] | None, **_: Any) -> Plan:
    wanted = select_splits(splits, list(FOLDERS), "COCO-Stuff")
    probe = FOLDERS[wanted[0]]
    labels = find_root(src, ["stuffthingmaps_trainval2017", "stuffthingmaps", "annotations"], probe,
                       "a COCO-Stuff-164k label tree",
                       "Give src= the folder holding stuffthingmaps_trainval2017/{train,val}2017 and the images "
                       "train2017/, val2017/ (or images/train2017).")
    images = next((d for d in (src, src / "images") if any((d / probe).glob("*.jpg"))), src)
    folders = {split: (images / FOLDERS[split], labels / FOLDERS[split]) for split in wanted}
    return pairs_plan(folders, OFFICIAL_SIZES, wanted, "COCO-Stuff")
