"""MS COCO 2014 instances -> ``COCO2014/{train,validation}``: 81-class semantic masks and tags.

Masks: background 0, class k = the k-th COCO category (in the order of ``dataset.classes``, matched
by name). Instances are rasterised with pycocotools (polygons and RLE alike). Overlaps follow
``coco.overlap``: ``area`` (default) paints instances largest first, so where two overlap the
smaller one, usually the one in front, keeps its pixels, independent of the JSON order, and crowd
regions lie beneath every single instance; ``json`` lets the first annotation of the file keep its
pixels, crowd ones included, as the public WSSS conversion scripts do (WeakTr's
``data/parse_coco.py``). Crowd regions (``iscrowd=1``) get their class (``coco.crowd=class``)
or 255 (``coco.crowd=ignore``). Tags: the categories of every annotation of the image, crowd
included, with their boxes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from dhr.data.convert.common import Plan, Sample, find_root, select_splits
from dhr.data.layout import DatasetInfo
from dhr.errors import DHRError

log = logging.getLogger(__name__)
OFFICIAL_SIZES = {"train": 82783, "validation": 40504}
SOURCES = {"train": "train2014", "validation": "val2014"}
OVERLAP_RULES = ("area", "json")
CROWD_RULES = ("class", "ignore")


def read_mask(source: dict[str, Any]) -> np.ndarray:
    """Paint one image's instances (``source`` = size, annotations and the two rules)."""
    from pycocotools import mask as mask_utils

    height, width = source["size"]
    label = np.zeros((height, width), dtype=np.uint8)
    if source["overlap"] == "area":  # crowd beneath, then the largest first (stable: equal areas keep the JSON order)
        crowd = [a for a in source["anns"] if a["iscrowd"]]
        order = crowd + sorted((a for a in source["anns"] if not a["iscrowd"]), key=lambda a: -a["area"])
    else:
        order = source["anns"][::-1]  # painted last = kept: the first annotation of the file wins
    for ann in order:
        segm = ann["segmentation"]
        try:
            if isinstance(segm, list):  # polygons
                if not segm:
                    continue
                rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
            elif isinstance(segm.get("counts"), list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(segm, height, width)
            else:  # compressed RLE
                rle = dict(segm, counts=segm["counts"].encode() if isinstance(segm["counts"], str) else segm["counts"])
            pixels = mask_utils.decode(rle).astype(bool)
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise DHRError(f"{source['file']}: annotation {ann.get('id')} has an unreadable segmentation ({err})") from None
        if pixels.shape != (height, width):
            raise DHRError(f"{source['file']}: annotation {ann.get('id')} segmentation is {pixels.shape[::-1]}, "
                           f"the image {width}x{height}")
        crowd_value = 255 if source["crowd"] == "ignore" else ann["class_id"]
        label[pixels] = crowd_value if ann["iscrowd"] else ann["class_id"]
    return label


def plan(src: Path, splits: list[str] | None, info: DatasetInfo, coco: Any = None, **_: Any) -> Plan:
    overlap = str(coco.overlap) if coco is not None else "area"
    crowd = str(coco.crowd) if coco is not None else "class"
    if overlap not in OVERLAP_RULES:
        raise DHRError(f"coco.overlap={overlap!r}: use one of {OVERLAP_RULES}")
    if crowd not in CROWD_RULES:
        raise DHRError(f"coco.crowd={crowd!r}: use one of {CROWD_RULES}")
    wanted = select_splits(splits, list(SOURCES), "COCO2014")
    root = find_root(src, ["", "coco", "COCO2014"], "annotations", "a COCO 2014 download",
                     "Give src= the folder holding annotations/instances_train2014.json, train2014/ and val2014/.")
    out = {}
    for split in wanted:
        out[split] = _plan_split(root, split, info, overlap, crowd)
    return Plan(out, {k: v for k, v in OFFICIAL_SIZES.items() if k in out},
                [f"overlap={overlap}, crowd={crowd}"])


def _plan_split(root: Path, split: str, info: DatasetInfo, overlap: str, crowd: str) -> list[Sample]:
    name = SOURCES[split]
    ann_file = root / "annotations" / f"instances_{name}.json"
    if not ann_file.is_file():
        raise DHRError(f"{ann_file}: not found; extract annotations_trainval2014.zip into {root}")
    images_dir = next((d for d in (root / name, root / "images" / name) if d.is_dir()), None)
    if images_dir is None:
        raise DHRError(f"{root / name}: image folder not found; extract {name}.zip into {root}")
    log.info("reading %s", ann_file)
    try:
        data = json.loads(ann_file.read_text())
        categories = {c["id"]: c["name"] for c in data["categories"]}
        images = data["images"]
        annotations = data.get("annotations", [])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DHRError(f"{ann_file}: not a COCO instances file ({err})") from None
    unknown = sorted(n for n in categories.values() if n not in info.class_to_id)
    if unknown:
        raise DHRError(f"{ann_file}: categories {unknown[:5]} are not in dataset.classes of {info.name}; "
                       "use dataset=coco (the 80 COCO things)")
    per_image: dict[int, list[dict[str, Any]]] = {}
    for ann in annotations:
        if ann.get("category_id") not in categories:
            raise DHRError(f"{ann_file}: annotation {ann.get('id')} has category_id {ann.get('category_id')}, "
                           "which the file's categories do not list; re-download the annotations")
        per_image.setdefault(ann["image_id"], []).append(ann)
    samples = []
    for image in sorted(images, key=lambda im: im["file_name"]):
        anns = [
            {"id": a.get("id"), "class_id": info.class_to_id[categories[a["category_id"]]], "iscrowd": int(a.get("iscrowd", 0)),
             "area": float(a.get("area", 0.0)), "segmentation": a["segmentation"], "bbox": a.get("bbox", [0, 0, 0, 0])}
            for a in per_image.get(image["id"], [])
        ]
        objects = tuple(
            (info.classes[a["class_id"]], (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]))
            for a in anns
        )
        path = images_dir / image["file_name"]
        source = {"file": str(ann_file), "size": (int(image["height"]), int(image["width"])), "anns": anns,
                  "overlap": overlap, "crowd": crowd}
        samples.append(Sample(split, path.stem, path, source, None, objects))
    return samples
