"""The official DHR dataset tree (``evaluation.md`` §1), its class list and up-front validation.

``{data_root}/{DATA}/{split}/image/{id}.jpg``, ``mask/{id}.png``, ``xml/{id}.xml`` (or a
``cls_labels.json`` of class ids per image), optional ``{DATA}/{DATA}.json`` class list.
Torch-free, so the evaluator can use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dhr.data.palette import make_palette
from dhr.data.tags import read_xml_names
from dhr.errors import DHRError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
MAX_LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its folder name, ordered class names, palette and ignore value."""

    name: str
    classes: tuple[str, ...]
    palette: str = "voc"
    ignore_index: int = 255
    eval_background_only: bool = False
    splits: Mapping[str, str | None] = field(default_factory=dict)
    background_id: int | None = None  # the class image-level tags never name (dataset.background_id)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> DatasetInfo:
        """Build from a ``conf/dataset/*.yaml`` node, checking ``num_classes`` against the list."""
        classes = tuple(str(c) for c in cfg["classes"])
        declared = cfg.get("num_classes")
        if declared is not None and int(declared) != len(classes):
            raise DHRError(
                f"dataset {cfg['name']}: num_classes={declared} but {len(classes)} class names "
                "are listed; fix dataset.num_classes or dataset.classes"
            )
        if len(set(classes)) != len(classes):
            raise DHRError(f"dataset {cfg['name']}: duplicate class names in dataset.classes")
        if "background_id" not in cfg:
            raise DHRError(f"dataset {cfg['name']}: set dataset.background_id (the background class id, or null)")
        background = cfg["background_id"]
        if background is not None and not 0 <= int(background) < len(classes):
            raise DHRError(f"dataset {cfg['name']}: background_id={background} is not a class id (0..{len(classes) - 1})")
        return cls(
            name=str(cfg["name"]),
            classes=classes,
            palette=str(cfg.get("palette", "voc")),
            ignore_index=int(cfg.get("ignore_index", 255)),
            eval_background_only=bool(cfg.get("eval_background_only", False)),
            splits=dict(cfg.get("splits") or {}),
            background_id=None if background is None else int(background),
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_background(self) -> bool:
        return self.background_id is not None

    @property
    def foreground_ids(self) -> list[int]:
        """Class ids that image-level tags cover (all but background)."""
        return [i for i in range(self.num_classes) if i != self.background_id]

    @cached_property
    def class_to_id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    @cached_property
    def palette_array(self) -> np.ndarray:
        return make_palette(self.palette, self.num_classes)

    def split_dir_name(self, split: str) -> str:
        """Map a logical split (``train``/``val``/``test``) to its folder; folder names pass through."""
        mapped = self.splits.get(split)
        return str(mapped) if mapped else split

    def multi_hot(self, class_ids: Iterable[int]) -> np.ndarray:
        """Tag vector over the foreground classes (background dropped when the dataset has one)."""
        fg = self.foreground_ids
        index = {c: i for i, c in enumerate(fg)}
        vec = np.zeros(len(fg), dtype=np.float32)
        for c in class_ids:
            if c in index:
                vec[index[c]] = 1.0
        return vec


class DatasetLayout:
    """Paths and reading of one dataset tree under ``data_root``."""

    def __init__(self, data_root: str | os.PathLike, info: DatasetInfo) -> None:
        self.data_root = Path(data_root)
        self.info = info
        self.root = self.data_root / info.name

    def split_dir(self, split: str) -> Path:
        return self.root / self.info.split_dir_name(split)

    def mask_dir(self, split: str) -> Path:
        return self.split_dir(split) / "mask"

    def _require_split(self, split: str) -> Path:
        d = self.split_dir(split)
        if not (d / "image").is_dir():
            present = sorted(p.name for p in self.root.iterdir() if (p / "image").is_dir()) if self.root.is_dir() else []
            hint = f"splits present: {present}" if present else f"no dataset at {self.root}"
            raise DHRError(
                f"{d / 'image'}: split folder not found ({hint}). Set paths.data_root (or $DHR_DATA) "
                "to the folder that holds the dataset, or pick an existing split."
            )
        return d

    def image_paths(self, split: str) -> dict[str, Path]:
        """Image path of every id of a split, sorted by id."""
        image_dir = self._require_split(split) / "image"
        paths: dict[str, Path] = {}
        twins: list[str] = []
        for p in sorted(image_dir.iterdir()):
            if p.suffix.lower() in IMAGE_EXTS:
                if p.stem in paths:
                    twins.append(f"{paths[p.stem].name} and {p.name}")
                paths[p.stem] = p
        if twins:
            raise DHRError(f"{image_dir}: {len(twins)} image ids have two files ({'; '.join(twins[:5])}); "
                           "keep one file per id (the mask and the predictions are named by the id alone)")
        if not paths:
            raise DHRError(f"{image_dir}: no images ({', '.join(IMAGE_EXTS)}) in the split folder")
        return dict(sorted(paths.items()))

    def ids(self, split: str) -> list[str]:
        return list(self.image_paths(split))

    def input_folders(self) -> dict[str, Path]:
        """Every folder of the tree that runs read (image, mask, xml, feature folders of every split):
        outputs never go into them (:func:`dhr.utils.io.refuse_inside`)."""
        folders: dict[str, Path] = {}
        if not self.root.is_dir():
            return folders
        for split_dir in sorted(p for p in self.root.iterdir() if (p / "image").is_dir()):
            for sub in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                if sub.name in ("image", "mask", "xml") or next(sub.glob("*.pt"), None) is not None:
                    folders[f"{self.info.name}/{split_dir.name}/{sub.name}"] = sub
        return folders

    def mask_path(self, split: str, image_id: str) -> Path:
        return self.mask_dir(split) / f"{image_id}.png"

    def has_tags(self, split: str) -> bool:
        d = self.split_dir(split)
        return (d / "xml").is_dir() or (d / "cls_labels.json").is_file()

    def read_tags(self, split: str, ids: Sequence[str] | None = None) -> dict[str, tuple[int, ...]]:
        """Class ids present per image, from ``xml/`` or else ``cls_labels.json``."""
        d = self._require_split(split)
        ids = list(ids) if ids is not None else self.ids(split)
        if (d / "xml").is_dir():
            return {i: self._xml_ids(d / "xml" / f"{i}.xml") for i in ids}
        json_path = d / "cls_labels.json"
        if json_path.is_file():
            try:
                table = json.loads(json_path.read_text())
            except json.JSONDecodeError as err:
                raise DHRError(f"{json_path}: malformed JSON ({err})") from None
            missing = [i for i in ids if i not in table]
            if missing:
                raise DHRError(f"{json_path}: no tags for {len(missing)} images, e.g. {missing[:5]}")
            out = {}
            for i in ids:
                bad = [c for c in table[i] if not 0 <= int(c) < self.info.num_classes]
                if bad:
                    raise DHRError(f"{json_path}: image {i} has class ids {bad} outside 0..{self.info.num_classes - 1}")
                out[i] = tuple(sorted({int(c) for c in table[i]}))
            return out
        raise DHRError(
            f"{d}: no image-level tags: add an xml/ folder of VOC annotations or a cls_labels.json"
        )

    def _xml_ids(self, path: Path) -> tuple[int, ...]:
        names = read_xml_names(path)
        unknown = [n for n in names if n not in self.info.class_to_id]
        if unknown:
            raise DHRError(
                f"{path}: unknown class name(s) {unknown}; names must match dataset.classes "
                f"of {self.info.name} exactly (e.g. {list(self.info.classes[:4])} ...)"
            )
        return tuple(sorted(self.info.class_to_id[n] for n in names))

    def check_class_json(self) -> None:
        """If ``{DATA}/{DATA}.json`` exists, its names must equal the configured classes."""
        path = self.root / f"{self.info.name}.json"
        if not path.is_file():
            return
        try:
            names = [str(n) for n in json.loads(path.read_text())["names"]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DHRError(f"{path}: expected {{'names': [...], 'ignore': 255}} ({err})") from None
        if tuple(names) != self.info.classes:
            first = next((f"{a!r} where dataset.classes has {b!r}" for a, b in zip(names, self.info.classes, strict=False) if a != b),
                         f"{len(names)} names where dataset.classes has {self.info.num_classes}")
            raise DHRError(f"{path}: its class names differ from dataset.classes of {self.info.name} ({first}); "
                           "pick the dataset config matching this data")

    def validate(self, split: str, *, masks: bool = True, tags: bool = False,
                 mask_dir: Path | None = None, workers: int | None = None) -> list[str]:
        """The quick check of a split (``data.validate=quick``); raise one DHRError listing the problems.

        Checks: split present, every image has a mask of the same size (headers only), tags parse
        to known classes. Returns the ids of the split. Decoding every file is the full check,
        :func:`dhr.data.doctor.check_split` (``data.validate=full``).
        """
        self.check_class_json()
        images = self.image_paths(split)
        ids = list(images)
        if tags:
            self.read_tags(split, ids)
        if not masks:
            return ids
        mdir = mask_dir if mask_dir is not None else self.mask_dir(split)
        if not mdir.is_dir():
            raise DHRError(f"{mdir}: mask folder not found for split {split!r}")

        def check(image_id: str) -> str | None:
            mpath = mdir / f"{image_id}.png"
            if not mpath.is_file():
                return f"{mpath}: missing mask for image {images[image_id].name}"
            try:
                with Image.open(images[image_id]) as im:
                    isize = im.size
            except (OSError, SyntaxError) as err:
                return f"{images[image_id]}: cannot read image ({err})"
            try:
                with Image.open(mpath) as m:
                    msize = m.size
            except (OSError, SyntaxError) as err:
                return f"{mpath}: cannot read mask ({err})"
            if msize != isize:
                return f"{mpath}: mask is {msize[0]}x{msize[1]} but image is {isize[0]}x{isize[1]} (WxH)"
            return None

        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            problems = [p for p in pool.map(check, ids) if p]
        if problems:
            listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
            more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
            raise DHRError(f"{len(problems)} problem(s) in {mdir.parent} ({self.info.name}/{split}):\n  {listed}{more}")
        return ids
