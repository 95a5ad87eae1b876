"""PASCAL VOC 2012 + SBD -> ``VOC2012/{train_aug,validation,test}`` (evaluation.md §1).

``train_aug`` = (SBD train ∪ SBD val ∪ VOC train) − VOC val: 10,582 images. Masks: the VOC
``SegmentationClass`` PNG where VOC has one (hand-drawn, with 255 borders), else SBD's
``cls/{id}.mat`` (``GTcls.Segmentation``). Tags: the official ``Annotations/{id}.xml``, copied
verbatim (the image labels of IRN/MARS come from these files); where it is missing, the classes
of the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dhr.data.convert.common import Plan, Sample, find_root, read_id_list, select_splits
from dhr.errors import DHRError
from dhr.utils.io import read_label_png

OFFICIAL_SIZES = {"train_aug": 10582, "validation": 1449, "test": 1456}


def voc_root(src: Path) -> Path:
    return find_root(src, ["VOCdevkit/VOC2012", "VOC2012", ""], "ImageSets/Segmentation", "a VOC2012 tree",
                     "Give src= the folder holding VOCdevkit/VOC2012 (from VOCtrainval_11-May-2012.tar).")


def sbd_root(sbd: Path) -> Path:
    return find_root(sbd, ["benchmark_RELEASE/dataset", "dataset", ""], "cls", "an SBD release",
                     "Give sbd= the folder holding benchmark_RELEASE/dataset/cls (from benchmark.tgz).")


def read_mask(source: Path) -> np.ndarray:
    """A VOC index PNG or an SBD ``.mat`` as class ids (RGB renderings are refused by name)."""
    if source.suffix == ".mat":
        return read_sbd_mat(source)
    return read_label_png(source)


def read_sbd_mat(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        return np.asarray(mat["GTcls"].Segmentation, dtype=np.uint8)
    except FileNotFoundError:
        raise DHRError(f"{path}: SBD label file not found") from None
    except (KeyError, AttributeError, ValueError, OSError, IndexError, TypeError) as err:  # MatReadError is a ValueError
        raise DHRError(f"{path}: not an SBD cls .mat with GTcls.Segmentation ({err}); re-extract benchmark.tgz") from None


def plan(src: Path, sbd: Path | None, splits: list[str] | None, **_: Any) -> Plan:
    root = voc_root(src)
    lists = root / "ImageSets" / "Segmentation"
    wanted = select_splits(splits, list(OFFICIAL_SIZES), "VOC2012")
    val = read_id_list(lists / "val.txt")
    out: dict[str, list[Sample]] = {}
    notes = []
    if "train_aug" in wanted:
        if sbd is None:
            raise DHRError("dataset=voc: train_aug needs SBD; pass sbd=DIR (benchmark_RELEASE from benchmark.tgz), "
                           "or splits=[validation,test] to convert without it")
        sroot = sbd_root(sbd)
        ids = set(read_id_list(sroot / "train.txt")) | set(read_id_list(sroot / "val.txt"))
        ids |= set(read_id_list(lists / "train.txt"))
        ids -= set(val)
        samples = []
        for i in sorted(ids):
            voc_png = root / "SegmentationClass" / f"{i}.png"
            mask = voc_png if voc_png.is_file() else sroot / "cls" / f"{i}.mat"
            samples.append(_sample(root, "train_aug", i, mask))
        out["train_aug"] = samples
        notes.append(f"train_aug masks: {sum(s.mask_source.suffix == '.png' for s in samples)} from VOC, "
                     f"{sum(s.mask_source.suffix == '.mat' for s in samples)} from SBD")
    if "validation" in wanted:
        out["validation"] = [_sample(root, "validation", i, root / "SegmentationClass" / f"{i}.png") for i in val]
    if "test" in wanted:
        test_list = lists / "test.txt"
        if test_list.is_file():
            out["test"] = [_sample(root, "test", i, None) for i in read_id_list(test_list)]
        elif splits:
            raise DHRError(f"{test_list}: not found; extract VOC2012_test.tar into the same VOCdevkit to convert test")
        else:
            notes.append(f"test skipped: no {test_list} (extract VOC2012_test.tar beside trainval to add it)")
    return Plan(out, {k: v for k, v in OFFICIAL_SIZES.items() if k in out}, notes)


def _sample(root: Path, split: str, image_id: str, mask: Path | None) -> Sample:
    xml = root / "Annotations" / f"{image_id}.xml"
    return Sample(split, image_id, root / "JPEGImages" / f"{image_id}.jpg", mask, xml if xml.is_file() else None)
