"""PASCAL Context (``trainval.tar.gz`` of the official release) -> ``PascalContext/{train,validation}``.

Labels: ``trainval/{id}.mat`` holds ``LabelMap`` (uint16; k = line k of ``labels.txt``, 459
classes, 0 unlabeled). The 59-class protocol keeps the 59 classes of ``dataset.classes``
(``59_labels.txt`` order, ``labels.txt`` names, matched by name) and makes everything else 255:
no background class. Images and splits: VOC2010 ``JPEGImages`` and ``ImageSets/Main/{train,val}.txt``
(4,998 / 5,105). Tags: the classes present in the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dhr.data.convert.common import Plan, Sample, find_root, read_id_list, select_splits
from dhr.data.layout import DatasetInfo
from dhr.errors import DHRError

OFFICIAL_SIZES = {"train": 4998, "validation": 5105}
SOURCES = {"train": "train", "validation": "val"}


def read_labels_txt(path: Path) -> dict[str, int]:
    """``labels.txt`` (``"k: name"`` per line) as name -> k."""
    if not path.is_file():
        raise DHRError(f"{path}: not found; it comes with trainval.tar.gz of PASCAL Context")
    out = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            k, name = line.split(":", 1)
            out[name.strip()] = int(k)
    return out


def read_mask(source: tuple[Path, tuple[int, ...]]) -> np.ndarray:
    """``LabelMap`` of one ``.mat`` with the listed ids numbered 0.. and everything else 255."""
    from scipy.io import loadmat

    path, ids = source
    try:
        labels = np.asarray(loadmat(path)["LabelMap"])
    except FileNotFoundError:
        raise DHRError(f"{path}: PASCAL Context label file not found") from None
    except (KeyError, ValueError, OSError, IndexError, TypeError) as err:  # MatReadError is a ValueError
        raise DHRError(f"{path}: not a PASCAL Context .mat with LabelMap ({err}); re-extract trainval.tar.gz") from None
    table = np.full(int(max(labels.max(initial=0), max(ids))) + 1, 255, dtype=np.uint8)
    table[list(ids)] = np.arange(len(ids), dtype=np.uint8)
    return table[labels]


def plan(src: Path, splits: list[str] | None, info: DatasetInfo, **_: Any) -> Plan:
    wanted = select_splits(splits, list(SOURCES), "PascalContext")
    voc = find_root(src, ["VOCdevkit/VOC2010", "VOC2010", ""], "ImageSets/Main", "a VOC2010 tree",
                    "Give src= the folder holding VOCdevkit/VOC2010 (VOCtrainval_03-May-2010.tar) and trainval/ + "
                    "labels.txt (trainval.tar.gz of PASCAL Context).")
    labels_root = find_root(src, ["", "trainval", "PASCAL-Context", "VOCdevkit/VOC2010"], "labels.txt", "PASCAL Context labels",
                            "Extract trainval.tar.gz of PASCAL Context into src= (trainval/*.mat and labels.txt).")
    mat_dir = labels_root / "trainval" if (labels_root / "trainval").is_dir() else labels_root
    name_to_id = read_labels_txt(labels_root / "labels.txt")
    missing = [n for n in info.classes if n not in name_to_id]
    if missing:
        raise DHRError(f"{labels_root / 'labels.txt'}: has no class {missing[:5]} of dataset.classes; "
                       "use dataset=context (the 59-class list)")
    ids = tuple(name_to_id[n] for n in info.classes)
    out = {}
    for split in wanted:
        image_ids = read_id_list(voc / "ImageSets" / "Main" / f"{SOURCES[split]}.txt")
        out[split] = [Sample(split, i, voc / "JPEGImages" / f"{i}.jpg", (mat_dir / f"{i}.mat", ids)) for i in image_ids]
    return Plan(out, {k: v for k, v in OFFICIAL_SIZES.items() if k in out})
