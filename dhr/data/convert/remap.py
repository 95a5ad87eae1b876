"""Converters whose labels are already index PNGs, only renumbered: ADE20K and COCO-Stuff-164k.

``lookup`` maps every raw value (0..255) to a class id or 255; a raw value with no class maps
to an id past the class list, so the writer names the file instead of silently ignoring it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhr.data.convert.common import Plan, Sample, select_splits
from dhr.errors import DHRError
from dhr.utils.io import read_label_png

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def lookup_table(raw_to_class: dict[int, int], ignore: int = 255, unknown: int = 254) -> np.ndarray:
    """A 256-entry table: listed raw values to their class, 255 stays ignore, anything else to ``unknown``."""
    table = np.full(256, unknown, dtype=np.uint8)
    table[ignore] = ignore
    for raw, cls in raw_to_class.items():
        table[raw] = cls
    return table


def remap_png(path: Path, table: np.ndarray) -> np.ndarray:
    return table[read_label_png(path)]


def plan_pairs(images_dir: Path, labels_dir: Path, split: str) -> list[Sample]:
    """One sample per image of ``images_dir`` whose label is ``labels_dir/{stem}.png`` (checked when written)."""
    if not images_dir.is_dir():
        raise DHRError(f"{images_dir}: image folder not found")
    if not labels_dir.is_dir():
        raise DHRError(f"{labels_dir}: label folder not found")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [Sample(split, p.stem, p, labels_dir / f"{p.stem}.png") for p in images]


def pairs_plan(folders: dict[str, tuple[Path, Path]], official: dict[str, int], splits: list[str] | None,
               name: str) -> Plan:
    wanted = select_splits(splits, list(folders), name)
    out = {split: plan_pairs(*folders[split], split) for split in wanted}
    return Plan(out, {k: v for k, v in official.items() if k in out})
