"""ADE20K SceneParsing (``ADEChallengeData2016``) -> ``ADE2016/{train,validation}``, 150 classes.

Raw 0 ("other") becomes 255 and raw k becomes k - 1 (the usual ``reduce_zero_label``), so id 0 is
wall, as in ``objectInfo150.txt``. Tags: the classes present in the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dhr.data.convert.common import Plan, find_root
from dhr.data.convert.remap import lookup_table, pairs_plan, remap_png

OFFICIAL_SIZES = {"train": 20210, "validation": 2000}
TABLE = lookup_table({0: 255, **{k: k - 1 for k in range(1, 151)}})


def read_mask(source: Path) -> np.ndarray:
    return remap_png(source, TABLE)


def plan(src: Path, splits: list[str] | None, **_: Any) -> Plan:
    root = find_root(src, ["ADEChallengeData2016", ""], "annotations", "an ADE20K SceneParsing tree",
                     "Give src= the folder holding ADEChallengeData2016/{images,annotations} (ADEChallengeData2016.zip).")
    folders = {split: (root / "images" / name, root / "annotations" / name)
               for split, name in (("train", "training"), ("validation", "validation"))}
    return pairs_plan(folders, OFFICIAL_SIZES, splits, "ADE2016")
