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

from dhr.data.layout import IMAGE_EXTS, DatasetInfo, DatasetLayout
from dhr.data.synthetic import generate_from_cfg, write_erased_seeds, write_swallowed_seeds
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


SIMULATED_SEEDS = ("swallowed", "erased")


def ensure_simulated_seeds(data_root: str | os.PathLike, dataset_cfg: Mapping[str, Any], folder: str | os.PathLike,
                           *, mode: str, reach: int = 2) -> Path:
    """The simulated WSS seeds of a generated set (``wss=swallowed``), written once, whole or not at all.

    ``swallowed``: each minor object that touches a larger one takes its class, as seed expansion
    floods it; ``erased``: every minor object is background. Made from the GT masks, so they stand
    in for a WSS method's output in a controlled study, never for one of its results.
    """
    folder = Path(folder)
    if folder.is_dir() and any(folder.glob("*.png")):
        return folder
    if mode not in SIMULATED_SEEDS:
        raise DHRError(f"data.simulated_seeds.mode={mode!r}: use one of {SIMULATED_SEEDS}")
    if not dataset_cfg.get("generate"):
        raise DHRError(f"data.simulated_seeds.mode={mode}: only the generated synthetic sets have simulated seeds "
                       f"(dataset {dataset_cfg.get('name')} is not generated); bring a WSS method's masks with wss=folder wss.path=DIR")
    ensure_dataset(data_root, dataset_cfg)
    masks = DatasetLayout(data_root, DatasetInfo.from_cfg(dict(dataset_cfg))).mask_dir("train")
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    if mode == "swallowed":
        n, swallowed, kept = write_swallowed_seeds(masks, partial, reach=int(reach))
        what = f"{swallowed} minor objects swallowed by a neighbour, {kept} kept"
    else:
        n, what = write_erased_seeds(masks, partial), "every minor object erased"
    if folder.is_dir():
        folder.rmdir()  # empty: a folder with PNGs returned above
    partial.rename(folder)
    log.info("simulated %s seeds: %d masks in %s (%s)", mode, n, folder, what)
    return folder


def read_tags_file(path: Path, info: DatasetInfo) -> dict[str, list[str]]:
    """Class names per image key (file name or id) from a CSV or JSON tags file, names checked."""
    if not path.is_file():
        raise DHRError(f"dataset.folder.tags={path}: file not found; give a CSV (image,classes) or JSON tags file")
    table: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_no_duplicate_keys(path))
            table = {str(k): [str(n) for n in v] for k, v in raw.items()}
        except (json.JSONDecodeError, AttributeError, TypeError) as err:
            raise DHRError(f"{path}: expected JSON {{\"image\": [\"class name\", ...]}} ({err})") from None
    else:
        rows: dict[str, int] = {}
        with path.open(newline="", encoding="utf-8-sig") as handle:  # utf-8-sig: spreadsheets write a BOM
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"image", "classes"} <= {f.strip() for f in reader.fieldnames}:
                raise DHRError(f"{path}: a tags CSV needs the header 'image,classes' (classes separated by ';'), "
                               f"found {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "") for k, v in row.items() if k}
                key = row["image"].strip()
                if key in table:
                    raise DHRError(f"{path}:{line}: image {key!r} is listed twice (also line {rows[key]}); merge its rows")
                table[key] = [n.strip() for n in row["classes"].split(";") if n.strip()]
                rows[key] = line
    where = {k: f"{k} (line {rows[k]})" for k in table} if path.suffix.lower() != ".json" else {k: k for k in table}
    problems = [f"{where[k]}: {sorted(set(v) - set(info.class_to_id))}" for k, v in table.items() if set(v) - set(info.class_to_id)]
    if problems:
        raise DHRError(f"{path}: {len(problems)} image(s) name classes not in dataset.classes "
                       f"(e.g. {'; '.join(problems[:3])}); fix the names or add them to the class list")
    return table


def _no_duplicate_keys(path: Path) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise DHRError(f"{path}: image {key!r} is listed twice; merge its entries")
            seen[key] = value
        return seen

    return hook


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
    view_root = (data_root / info.name).resolve()
    for key, src in (("images", images_dir), ("masks", masks_dir), ("tags", tags_path)):
        if src is None:
            continue
        r = src.resolve()
        if r == view_root or view_root in r.parents or r in view_root.parents:
            raise DHRError(f"dataset.folder.{key}={src} and the view {data_root / info.name} overlap; keep your files "
                           "outside it (set paths.data_root or dataset.name to a place of its own)")
    stamp = {"images": str(images_dir.resolve()), "tags": str(tags_path.resolve()),
             "masks": str(masks_dir.resolve()) if masks_dir else None, "classes": list(info.classes),
             "tags_mtime": tags_path.stat().st_mtime_ns if tags_path.is_file() else None,
             "images_mtime": images_dir.stat().st_mtime_ns}
    manifest = split_dir / VIEW_MANIFEST
    previous = json.loads(manifest.read_text()) if manifest.is_file() else None
    if previous is not None and previous.get("stamp") == stamp:
        return split_dir
    if previous is None and split_dir.is_dir() and any(split_dir.iterdir()):
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
    tags = _tags_per_id(read_tags_file(tags_path, info), files, tags_path, images_dir)
    if masks_dir is not None:
        missing = sorted(s for s in files if not (masks_dir / f"{s}.png").is_file())
        if missing:
            raise DHRError(f"dataset.folder.masks={masks_dir}: {len(missing)} of {len(files)} images have no {{id}}.png "
                           f"mask (e.g. {missing[:5]}); give every image a mask or set dataset.folder.masks=null")
    untagged = sorted(set(files) - set(tags))
    if untagged:
        log.warning("%d of %d images in %s have no row in %s (e.g. %s): they count as untagged and training drops them",
                    len(untagged), len(files), images_dir, tags_path, untagged[:3])
    for rel in (previous or {}).get("files", []):  # what the earlier view wrote, and nothing else
        (split_dir / rel).unlink(missing_ok=True)
    written = []
    for stem, path in files.items():
        written.append(f"image/{stem}{path.suffix.lower()}")
        _link(path, split_dir / written[-1])
        written.append(f"xml/{stem}.xml")
        objects = [(n, (0.0, 0.0, 1.0, 1.0)) for n in tags.get(stem, [])]
        write_xml(split_dir / written[-1], filename=path.name, size=(1, 1), objects=objects)
        if masks_dir is not None:
            written.append(f"mask/{stem}.png")
            _link(masks_dir / f"{stem}.png", split_dir / written[-1])
        if len(written) <= 3:  # from the first file on, a rerun knows what it may remove
            atomic_write_json(manifest, {"stamp": None, "files": written})
    atomic_write_json(manifest, {"stamp": stamp, "files": written})
    log.info("folder dataset: %d images (%d tagged) from %s viewed at %s", len(files), len(tags), images_dir, split_dir)
    return split_dir


def _tags_per_id(table: dict[str, list[str]], files: dict[str, Path], tags_path: Path, images_dir: Path) -> dict[str, list[str]]:
    """Rows keyed by file name or id, mapped to ids; a row naming no image or a second row of one image is an error."""
    tags: dict[str, list[str]] = {}
    for key, names in table.items():
        stem = key if key in files else Path(key).stem
        if stem not in files or (key != stem and files[stem].name != key):
            raise DHRError(f"{tags_path}: image {key!r} is not in {images_dir}; remove the row or add the image")
        if stem in tags:
            raise DHRError(f"{tags_path}: image {files[stem].name} has two rows ({stem!r} and {key!r}); merge them")
        tags[stem] = names
    return tags


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # file systems without symbolic links
        shutil.copyfile(src, dst)

