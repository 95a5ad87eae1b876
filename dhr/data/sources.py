"""Datasets that are not a DHR tree yet: generated (``dataset.generate``) or a user folder (``dataset.folder``).

:func:`ensure_dataset` is what every entry point calls before it reads a dataset. A folder
dataset (``dataset=folder``) is a directory of images with any file names plus a tags file;
it becomes a *view* ``{data_root}/{name}/{split}/{image,xml,mask}``: symbolic links to the
user's images and masks (copies where links are refused) and XML tags written from the tags
file. The user's folder is only read. Later stages write beside the view (features, seeds),
never into the folder.

Tags files: CSV with a header ``image,classes`` (``image`` = file name or id, ``classes`` =
names separated by ``;``), or JSON ``{"file name or id": ["name", ...]}``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dhr.data.layout import IMAGE_EXTS, DatasetInfo
from dhr.data.synthetic import generate_from_cfg
from dhr.data.tags import write_xml
from dhr.errors import DHRError
from dhr.utils.io import atomic_write_json

log = logging.getLogger(__name__)
VIEW_MANIFEST = ".folder_view.json"


def ensure_dataset(data_root: str | os.PathLike, dataset_cfg: Mapping[str, Any]) -> Path | None:
    """Generate the synthetic set or build the folder view a config describes; a no-op for a tree."""
    if dataset_cfg.get("folder"):
        return build_folder_view(Path(data_root), dataset_cfg)
    return generate_from_cfg(data_root, dataset_cfg)


def read_tags_file(path: Path, info: DatasetInfo) -> dict[str, list[str]]:
    """Class names per image key (file name or id) from a CSV or JSON tags file, names checked."""
    if not path.is_file():
        raise DHRError(f"dataset.folder.tags={path}: file not found; give a CSV (image,classes) or JSON tags file")
    table: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text())
            table = {str(k): [str(n) for n in v] for k, v in raw.items()}
        except (json.JSONDecodeError, AttributeError, TypeError) as err:
            raise DHRError(f"{path}: expected JSON {{\"image\": [\"class name\", ...]}} ({err})") from None
    else:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"image", "classes"} <= {f.strip() for f in reader.fieldnames}:
                raise DHRError(f"{path}: a tags CSV needs the header 'image,classes' (classes separated by ';'), "
                               f"found {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "") for k, v in row.items() if k}
                key = row["image"].strip()
                if key in table:
                    raise DHRError(f"{path}:{line}: image {key!r} is listed twice; merge its rows")
                table[key] = [n.strip() for n in row["classes"].split(";") if n.strip()]
    problems = [f"{k}: {sorted(set(v) - set(info.class_to_id))}" for k, v in table.items() if set(v) - set(info.class_to_id)]
    if problems:
        raise DHRError(f"{path}: {len(problems)} image(s) name classes not in dataset.classes "
                       f"(e.g. {'; '.join(problems[:3])}); fix the names or add them to the class list")
    return table


def build_folder_view(data_root: Path, dataset_cfg: Mapping[str, Any]) -> Path:
    """Link a folder of images (+ tags, optional masks) into the DHR tree layout; rebuilt when inputs change."""
    info = DatasetInfo.from_cfg(dataset_cfg)
    spec = dataset_cfg["folder"]
    images_dir = Path(str(spec["images"])).expanduser()
    tags_path = Path(str(spec["tags"])).expanduser()
    masks_dir = Path(str(spec["masks"])).expanduser() if spec.get("masks") else None
    if not images_dir.is_dir():
        raise DHRError(f"dataset.folder.images={images_dir}: folder not found")
    if masks_dir is not None and not masks_dir.is_dir():
        raise DHRError(f"dataset.folder.masks={masks_dir}: folder not found (or set it to null: no scoring)")
    split_dir = data_root / info.name / info.split_dir_name("train")
    for src in (images_dir, masks_dir):
        if src is not None and (src.resolve() == split_dir.resolve() or src.resolve() in split_dir.resolve().parents):
            raise DHRError(f"paths.data_root={data_root}: the view {split_dir} would lie inside {src}; "
                           "pick a data_root outside the image folder")
    stamp = {"images": str(images_dir.resolve()), "tags": str(tags_path.resolve()),
             "masks": str(masks_dir.resolve()) if masks_dir else None, "classes": list(info.classes),
             "tags_mtime": tags_path.stat().st_mtime_ns if tags_path.is_file() else None,
             "images_mtime": images_dir.stat().st_mtime_ns}
    manifest = split_dir / VIEW_MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == stamp:
        return split_dir
    if (split_dir / "image").is_dir() and not manifest.is_file():
        raise DHRError(f"{split_dir}: exists and is not a folder view of dhr; set dataset.name or paths.data_root "
                       "to a place of its own")
    files: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
            if p.stem in files:
                raise DHRError(f"{images_dir}: {files[p.stem].name} and {p.name} have the same id {p.stem!r}; "
                               "rename one (ids are file names without the extension)")
            files[p.stem] = p
    if not files:
        raise DHRError(f"dataset.folder.images={images_dir}: no images ({', '.join(IMAGE_EXTS)})")
    table = read_tags_file(tags_path, info)
    tags: dict[str, list[str]] = {}
    for key, names in table.items():
        stem = key if key in files else Path(key).stem
        if stem not in files or (key != stem and files[stem].name != key):
            raise DHRError(f"{tags_path}: image {key!r} is not in {images_dir}; remove the row or add the image")
        tags[stem] = names
    untagged = sorted(set(files) - set(tags))
    if untagged:
        log.warning("%d of %d images in %s have no row in %s (e.g. %s): they count as untagged and training drops them",
                    len(untagged), len(files), images_dir, tags_path, untagged[:3])
    for sub in ("image", "xml", "mask"):
        folder = split_dir / sub
        if folder.is_dir():  # stale entries of an earlier view
            for p in folder.iterdir():
                if p.is_symlink() or p.suffix in (".xml", ".png", *IMAGE_EXTS):
                    p.unlink()
    for stem, path in files.items():
        _link(path, split_dir / "image" / f"{stem}{path.suffix.lower()}")
        objects = [(n, (0.0, 0.0, 1.0, 1.0)) for n in tags.get(stem, [])]
        write_xml(split_dir / "xml" / f"{stem}.xml", filename=path.name, size=(1, 1), objects=objects)
        if masks_dir is not None:
            mask = masks_dir / f"{stem}.png"
            if mask.is_file():
                _link(mask, split_dir / "mask" / f"{stem}.png")
    if masks_dir is not None:
        missing = sum(not (masks_dir / f"{s}.png").is_file() for s in files)
        if missing:
            raise DHRError(f"dataset.folder.masks={masks_dir}: {missing} of {len(files)} images have no {{id}}.png mask; "
                           "give every image a mask or set dataset.folder.masks=null")
    atomic_write_json(manifest, stamp)
    log.info("folder dataset: %d images (%d tagged) from %s viewed at %s", len(files), len(tags), images_dir, split_dir)
    return split_dir


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # file systems without symbolic links
        shutil.copyfile(src, dst)

