"""Tiny trees in the official release formats (VOCdevkit + SBD, COCO instances, ADE20K, COCO-Stuff).

Built inside each test from random pictures and rectangles; nothing is committed or downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dhr.data.palette import make_palette

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def picture(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def label_map(h: int, w: int, seed: int, classes: list[int], border: int | None = None) -> np.ndarray:
    """Background with one rectangle per class (later ones on top), optionally a 1-px ignore border."""
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), dtype=np.uint8)
    for c in classes:
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        label[y:y + h // 3, x:x + w // 3] = c
        if border is not None:
            label[y, x:x + w // 3] = border
    return label


def save_index_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label, mode="P")
    image.putpalette(make_palette("voc", 256).reshape(-1).tolist())
    image.save(path)


def voc_xml(path: Path, names: list[str], extra_part: bool = True) -> None:
    """An official-style annotation, with a person-layout <part> whose <name> is not a class."""
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
        f"<ymax>5</ymax></bndbox>{'<part><name>head</name></part>' if extra_part else ''}</object>"
        for n in names
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><folder>VOC2012</folder><filename>{path.stem}.jpg</filename>{objs}</annotation>")


def make_voc(root: Path) -> dict[str, list[str]]:
    """VOCdevkit/VOC2012 and benchmark_RELEASE/dataset with overlapping split lists.

    VOC train a,b; VOC val c,d; SBD train a,e,c (c is VOC val: excluded); SBD val f; test t.
    train_aug = a,b,e,f (a's mask from VOC, e and f from SBD).
    """
    from scipy.io import savemat

    voc = root / "VOCdevkit" / "VOC2012"
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    lists = {"train": ["a", "b"], "val": ["c", "d"], "test": ["t"]}
    for name, ids in lists.items():
        (sets / f"{name}.txt").write_text("\n".join(ids) + "\n")
    classes = {"a": [15], "b": [1, 12], "c": [8], "d": [3, 20], "e": [7], "f": [19, 15], "t": []}
    for k, i in enumerate(sorted(classes)):
        h, w = 40 + 4 * k, 52 - 2 * k
        picture(voc / "JPEGImages" / f"{i}.jpg", h, w, k)
        label = label_map(h, w, k, classes[i], border=255)
        if i in ("a", "b", "c", "d"):
            save_index_png(voc / "SegmentationClass" / f"{i}.png", label)
        if i in ("a", "e", "c", "f"):
            sbd_label = label_map(h, w, k + 100, classes[i])
            sbd = root / "benchmark_RELEASE" / "dataset" / "cls"
            sbd.mkdir(parents=True, exist_ok=True)
            savemat(sbd / f"{i}.mat", {"GTcls": {"Segmentation": sbd_label, "Boundaries": np.zeros(1),
                                                  "CategoriesPresent": np.asarray(classes[i])}})
        if i != "e":  # e has no annotation: its tags come from its mask
            voc_xml(voc / "Annotations" / f"{i}.xml", [VOC_CLASSES[c] for c in classes[i]])
    (root / "benchmark_RELEASE" / "dataset" / "train.txt").write_text("a\ne\nc\n")
    (root / "benchmark_RELEASE" / "dataset" / "val.txt").write_text("f\n")
    return {"train_aug": ["a", "b", "e", "f"], "validation": ["c", "d"], "test": ["t"]}


def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, starting with zeros)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    runs, prev, count = [], 0, 0
    for v in flat:
        if v != prev:
            runs.append(count)
            prev, count = v, 0
        count += 1
    runs.append(count)
    return {"counts": runs, "size": list(mask.shape)}


def make_coco(root: Path, dog_first: bool = True) -> dict:
    """annotations/instances_{train,val}2014.json with polygons, uncompressed and compressed RLE.

    Image 1 (train): a big person polygon and a small dog polygon inside it (the dog listed first,
    or second with ``dog_first=False``), plus a crowd RLE of cars.
    Image 2 (train): no annotations. Image 3 (val): one compressed-RLE bicycle.
    """
    from pycocotools import mask as mask_utils

    categories = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"},
                  {"id": 18, "name": "dog"}]
    h, w = 40, 60
    for split, ids in (("train2014", (1, 2)), ("val2014", (3,))):
        for i in ids:
            picture(root / split / f"COCO_{split}_{i:012d}.jpg", h, w, i)
    crowd = np.zeros((h, w), dtype=np.uint8)
    crowd[30:38, 2:20] = 1
    bike = np.zeros((h, w), dtype=np.uint8, order="F")
    bike[5:15, 10:30] = 1
    bike_rle = mask_utils.encode(np.asfortranarray(bike))
    anns_train = [
        {"id": 10, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 100.0, "bbox": [20, 10, 10, 10],
         "segmentation": [[20, 10, 30, 10, 30, 20, 20, 20]]},
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 900.0, "bbox": [10, 2, 30, 30],
         "segmentation": [[10, 2, 40, 2, 40, 32, 10, 32]]},
        {"id": 12, "image_id": 1, "category_id": 3, "iscrowd": 1, "area": float(crowd.sum()), "bbox": [2, 30, 18, 8],
         "segmentation": rle_encode(crowd)},
    ]
    if not dog_first:
        anns_train[:2] = anns_train[1::-1]
    anns_val = [{"id": 20, "image_id": 3, "category_id": 2, "iscrowd": 0, "area": float(bike.sum()), "bbox": [10, 5, 20, 10],
                 "segmentation": {"counts": bike_rle["counts"].decode(), "size": [h, w]}}]
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True)
    for split, ids, anns in (("train2014", (1, 2), anns_train), ("val2014", (3,), anns_val)):
        images = [{"id": i, "file_name": f"COCO_{split}_{i:012d}.jpg", "height": h, "width": w} for i in ids]
        (ann_dir / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": categories}))
    return {"crowd": crowd.astype(bool), "bike": bike.astype(bool)}


def make_ade(root: Path) -> None:
    """ADEChallengeData2016 with raw labels 0 (other), 1 (wall) and 150 (flag)."""
    base = root / "ADEChallengeData2016"
    for split, names in (("training", ["ADE_train_00000001", "ADE_train_00000002"]), ("validation", ["ADE_val_00000001"])):
        for k, name in enumerate(names):
            picture(base / "images" / split / f"{name}.jpg", 30, 40, k)
            raw = np.zeros((30, 40), dtype=np.uint8)
            raw[:10] = 1
            raw[20:, :10] = 150
            out = base / "annotations" / split / f"{name}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(raw, mode="L").save(out)


def make_stuff(root: Path) -> None:
    """images train2017/ val2017/ and stuffthingmaps_trainval2017 with thing, stuff and 255 values."""
    for split, names in (("train2017", ["000000000009"]), ("val2017", ["000000000139"])):
        for k, name in enumerate(names):
            picture(root / split / f"{name}.jpg", 30, 40, k)
            raw = np.full((30, 40), 255, dtype=np.uint8)
            raw[:10] = 0      # person (COCO id 1)
            raw[10:20] = 12   # stop sign (COCO id 13): the 12th thing, after the unused id 12
            raw[20:, :20] = 181  # wood (COCO id 182), the last stuff class
            out = root / "stuffthingmaps_trainval2017" / split / f"{name}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(raw, mode="L").save(out)


def make_context(root: Path) -> None:
    """VOCdevkit/VOC2010 (images, Main split lists) and trainval/*.mat + labels.txt (459 names)."""
    from scipy.io import savemat

    from dhr.utils.config import conf_node

    names = sorted({"accordion", *conf_node("dataset/context.yaml", "classes")})
    names.remove("aeroplane")
    names.insert(1, "aeroplane")  # ids as in the release: 1 accordion, 2 aeroplane, ...
    (root / "labels.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("".join(f"{k}: {n}\n" for k, n in enumerate(names, start=1)))
    table = names.index("table") + 1
    voc = root / "VOCdevkit" / "VOC2010"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for split, image_id in (("train", "2008_000002"), ("val", "2008_000003")):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text(image_id + "\n")
        picture(voc / "JPEGImages" / f"{image_id}.jpg", 30, 40, 0)
        label = np.zeros((30, 40), dtype=np.uint16)
        label[:10], label[10:20], label[20:25] = 2, table, 1
        (root / "trainval").mkdir(exist_ok=True)
        savemat(root / "trainval" / f"{image_id}.mat", {"LabelMap": label})
