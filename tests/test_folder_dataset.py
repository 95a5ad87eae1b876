"""dataset=folder: a folder of images with any names + a tags file, viewed as a DHR tree."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_shared_data
from PIL import Image

from dhr.data.layout import DatasetInfo, DatasetLayout
from dhr.data.sources import build_folder_view
from dhr.errors import DHRError
from dhr.utils.cli import compose_config

COCO128 = SHARED_DATA / "coco128_seg"


def coco128_tags(path: Path, ids: list[str] | None = None) -> Path:
    """A tags CSV (image file name, '; '-separated class names) from the sample's class-id table."""
    names = (COCO128 / "classes.txt").read_text().splitlines()
    table = json.loads((COCO128 / "train2017" / "cls_labels.json").read_text())
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "classes"])
        for image_id in ids or sorted(table):
            writer.writerow([f"{image_id}.jpg", ";".join(names[c] for c in table[image_id])])
    return path


def folder_cfg(images: Path, tags: Path, *extra: str) -> dict:
    from omegaconf import OmegaConf

    cfg = compose_config("doctor", ["dataset=folder", f"dataset.folder.images={images}", f"dataset.folder.tags={tags}", *extra])
    return OmegaConf.to_container(cfg.dataset, resolve=True)


@needs_shared_data
def test_coco128_as_a_folder_dataset(tmp_path):
    cfg = folder_cfg(COCO128 / "train2017" / "image", coco128_tags(tmp_path / "tags.csv"),
                     f"dataset.classes_file={COCO128 / 'classes.txt'}", f"dataset.folder.masks={COCO128 / 'train2017' / 'mask'}")
    assert cfg["num_classes"] == 81 and cfg["background_id"] == 0 and cfg["classes"][1] == "person"
    view = build_folder_view(tmp_path / "data", cfg)
    layout = DatasetLayout(tmp_path / "data", DatasetInfo.from_cfg(cfg))
    assert len(layout.ids("train")) == 128 and layout.ids("val") == layout.ids("train")
    assert layout.validate("train", tags=True) == layout.ids("train")
    tags = layout.read_tags("train")
    assert tags["000000000009"] == (46, 50, 51)  # bowl, orange, broccoli in cls_labels.json
    assert sum(not t for t in tags.values()) == 2  # the two images without objects
    assert (view / "image" / "000000000009.jpg").resolve() == (COCO128 / "train2017/image/000000000009.jpg").resolve()
    before = (view / ".folder_view.json").stat().st_mtime_ns
    build_folder_view(tmp_path / "data", cfg)  # unchanged inputs: nothing rebuilt
    assert (view / ".folder_view.json").stat().st_mtime_ns == before


def test_any_file_names_json_tags_and_untagged_images(tmp_path, caplog):
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("My Photo 1.JPG", "b.png", "c.jpeg"):
        Image.new("RGB", (12, 10)).save(images / name, format="PNG" if name.endswith("png") else "JPEG")
    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps({"My Photo 1.JPG": ["cat", "dog"], "b": ["dog"]}))
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    caplog.set_level(logging.WARNING)
    cfg = folder_cfg(images, tags, f"dataset.classes_file={classes}")
    assert cfg["background_id"] is None and cfg["num_classes"] == 2
    build_folder_view(tmp_path / "data", cfg)
    layout = DatasetLayout(tmp_path / "data", DatasetInfo.from_cfg(cfg))
    assert layout.ids("train") == ["My Photo 1", "b", "c"]
    assert layout.read_tags("train") == {"My Photo 1": (0, 1), "b": (1,), "c": ()}
    assert "1 of 3 images" in caplog.text and "no row in" in caplog.text
    assert not any(p.name.endswith(".xml") for p in images.iterdir())  # the user's folder is only read


@pytest.mark.parametrize("problem, match", [
    ("duplicate", r"a\.jpg and a\.png have the same id 'a'"),
    ("unknown", r"tags\.csv: 1 image\(s\) name classes not in dataset\.classes \(e\.g\. a\.jpg \(line 2\): \['unicorn'\]\)"),
    ("twice", r"a\.jpg has two rows \('a' and 'a\.jpg'\)"),
    ("orphan", r"image 'zz\.jpg' is not in"),
    ("header", r"needs the header 'image,classes'"),
])
def test_bad_folder_inputs_name_the_file_and_the_fix(tmp_path, problem, match):
    images = tmp_path / "photos"
    images.mkdir()
    Image.new("RGB", (12, 10)).save(images / "a.jpg")
    if problem == "duplicate":
        Image.new("RGB", (12, 10)).save(images / "a.png")
    rows = {"unknown": "a.jpg,unicorn", "orphan": "zz.jpg,cat", "twice": "a,cat\na.jpg,dog"}.get(problem, "a.jpg,cat")
    header = "name,labels" if problem == "header" else "image,classes"
    (tmp_path / "tags.csv").write_text(f"{header}\n{rows}\n")
    cfg = folder_cfg(images, tmp_path / "tags.csv", "dataset.classes=[cat,dog]")
    with pytest.raises(DHRError, match=match):
        build_folder_view(tmp_path / "data", cfg)


def test_a_missing_class_list_names_the_key():
    from omegaconf.errors import InterpolationResolutionError

    with pytest.raises(InterpolationResolutionError, match="dataset.classes_file=PATH"):
        folder_cfg(Path("x"), Path("y"))


@needs_shared_data
def test_a_class_file_resolves_in_place_as_instantiate_does(tmp_path):
    from conftest import compose_cfg
    from omegaconf import OmegaConf

    cfg = compose_cfg("train", ["dataset=folder", f"dataset.classes_file={COCO128 / 'classes.txt'}",
                                "dataset.folder.images=x", "dataset.folder.tags=y"], tmp_path)
    OmegaConf.resolve(cfg)  # Hydra's instantiate resolves the config in place
    assert cfg.model.num_classes == 81 and cfg.dataset.background_id == 0 and cfg.data.dataset.classes[80] == "toothbrush"


def test_masks_inside_the_view_are_refused_and_a_failed_view_rebuilds(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (12, 10)).save(images / f"{name}.jpg")
    (tmp_path / "tags.csv").write_text("image,classes\na.jpg,cat\nb.jpg,dog\n")
    inside = tmp_path / "data" / "folder" / "train" / "mask"
    inside.mkdir(parents=True)
    cfg = folder_cfg(images, tmp_path / "tags.csv", "dataset.classes=[cat,dog]", f"dataset.folder.masks={inside}")
    with pytest.raises(DHRError, match="overlap; keep your files outside it"):
        build_folder_view(tmp_path / "data", cfg)
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.new("L", (12, 10)).save(masks / "a.png")
    cfg = folder_cfg(images, tmp_path / "tags.csv", "dataset.classes=[cat,dog]", f"dataset.folder.masks={masks}")
    inside.rmdir()
    with pytest.raises(DHRError, match=r"1 of 2 images have no \{id\}\.png mask \(e\.g\. \['b'\]\)"):
        build_folder_view(tmp_path / "data", cfg)
    Image.new("L", (12, 10)).save(masks / "b.png")
    view = build_folder_view(tmp_path / "data", cfg)  # the fixed inputs build the view
    assert sorted(p.name for p in (view / "mask").iterdir()) == ["a.png", "b.png"]
    (view / "CAUSE").mkdir()
    (view / "CAUSE" / "a.pt").write_bytes(b"features")  # written beside the view by a later stage
    (images / "b.jpg").unlink()
    (tmp_path / "tags.csv").write_text("image,classes\na.jpg,cat\n")
    build_folder_view(tmp_path / "data", cfg)  # inputs changed: rebuilt, b gone, nothing else touched
    assert sorted(p.name for p in (view / "image").iterdir()) == ["a.jpg"]
    assert (view / "CAUSE" / "a.pt").is_file() and (masks / "b.png").is_file()
