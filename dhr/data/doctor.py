"""A whole-tree health check (``python -m dhr.doctor``): every split, file and class at once.

Unlike the up-front validation of a training run (one split, stop at the first batch of
problems), the doctor decodes every image, mask, seed and feature file of every split and
reports all it finds: counts, class frequencies, untagged images, unreadable files, size
mismatches, out-of-range ids and orphans. Errors make a run fail; warnings do not.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dhr.data.layout import IMAGE_EXTS, DatasetLayout
from dhr.data.tags import read_xml_names
from dhr.errors import DHRError
from dhr.utils.io import read_label_png
from dhr.utils.progress import Progress


@dataclass
class SplitReport:
    """What one split holds and what is wrong with it."""

    split: str
    images: int = 0
    masks: int = 0
    tagged: int = 0
    untagged: int = 0
    seeds: int = 0
    features: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bad_ids: set[str] = field(default_factory=set)                # images with at least one error
    mask_images: dict[str, int] = field(default_factory=dict)   # class -> images whose mask holds it
    mask_pixels: dict[str, float] = field(default_factory=dict)  # class -> share of labelled pixels
    tag_images: dict[str, int] = field(default_factory=dict)    # class -> images tagged with it


def split_folders(layout: DatasetLayout) -> list[str]:
    """Every split folder of the tree (those with an ``image/`` folder), sorted."""
    if not layout.root.is_dir():
        raise DHRError(f"{layout.root}: no dataset here; set paths.data_root (or $DHR_DATA) or run python -m dhr.prepare")
    found = sorted(p.name for p in layout.root.iterdir() if (p / "image").is_dir())
    if not found:
        raise DHRError(f"{layout.root}: no split folders with an image/ folder inside")
    return found


def _stems(folder: Path, suffixes: tuple[str, ...]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
                out.setdefault(p.stem, []).append(p)
    return {k: sorted(v) for k, v in out.items()}


def check_split(layout: DatasetLayout, split: str, *, seeds_dir: Path | None = None, uss_name: str | None = None,
                uss_patch: int = 14, uss_dim: int | None = None, workers: int | None = None,
                progress: bool = True, uss_dir: Path | None = None) -> SplitReport:
    """Decode every file of one split folder and collect counts, frequencies and problems.

    ``split`` is the folder name; features are read from ``uss_dir`` if given, else ``{split}/{uss_name}``.
    """
    info = layout.info
    d = layout.root / split
    feature_dir = uss_dir if uss_dir is not None else (d / uss_name if uss_name else None)
    rep = SplitReport(split)
    images = _stems(d / "image", IMAGE_EXTS)
    if not images:
        rep.errors.append(f"{d / 'image'}: {'no images' if (d / 'image').is_dir() else 'split folder not found'}; "
                          f"the splits here are {[p.name for p in sorted(layout.root.iterdir()) if (p / 'image').is_dir()]}")
        return rep
    for stem, paths in sorted(images.items()):
        if len(paths) > 1:
            rep.bad_ids.add(stem)
            rep.errors.append(f"{d / 'image'}: id {stem!r} has {len(paths)} files ({', '.join(sorted(p.name for p in paths))}); keep one")
    rep.images = len(images)
    masks = _stems(d / "mask", (".png",))
    xmls = _stems(d / "xml", (".xml",))
    seeds = _stems(seeds_dir, (".png",)) if seeds_dir is not None else {}
    feats = _stems(feature_dir, (".pt",)) if feature_dir is not None else {}
    if seeds_dir is not None and not seeds_dir.is_dir():
        rep.errors.append(f"{seeds_dir}: seed folder not found (wss.path)")
    for kind, table, folder in (("mask", masks, d / "mask"), ("xml", xmls, d / "xml"), ("seed", seeds, seeds_dir),
                                ("feature", feats, feature_dir)):
        orphans = sorted(set(table) - set(images))
        if orphans:
            rep.warnings.append(f"{folder}: {len(orphans)} {kind} file(s) without an image, e.g. {orphans[:5]}")
    has_masks, has_xml = (d / "mask").is_dir(), (d / "xml").is_dir()
    json_tags = _json_tags(d / "cls_labels.json", rep) if not has_xml else None
    class_images: Counter[int] = Counter()
    pixels = np.zeros(256, dtype=np.int64)
    tag_counts: Counter[int] = Counter()

    def check(stem: str) -> tuple[list[str], set[int], np.ndarray | None, tuple[int, ...] | None]:
        errors: list[str] = []
        present: set[int] = set()
        counts = None
        image = images[stem][0]
        try:
            with Image.open(image) as im:
                im.load()
                width, height = im.size
        except (OSError, SyntaxError) as err:
            return [f"{image}: cannot decode image ({err})"], present, None, None
        for kind, table, folder in (("mask", masks, d / "mask"), ("seed", seeds, seeds_dir)):
            if kind == "mask" and not has_masks or kind == "seed" and seeds_dir is None:
                continue
            if stem not in table:
                errors.append(f"{folder}: no {kind} for image {image.name}")
                continue
            path = table[stem][0]
            try:
                label = read_label_png(path)
            except DHRError as err:
                errors.append(str(err))
                continue
            if label.shape != (height, width):
                errors.append(f"{path}: {kind} is {label.shape[1]}x{label.shape[0]} but the image is {width}x{height} (WxH)")
                continue
            bad = np.unique(label[(label >= info.num_classes) & (label != info.ignore_index)])
            if bad.size:
                errors.append(f"{path}: values {bad[:8].tolist()} are not class ids 0..{info.num_classes - 1} or {info.ignore_index}")
            if kind == "mask":
                counts = np.bincount(label.reshape(-1), minlength=256)
                present = {int(c) for c in np.nonzero(counts[: info.num_classes])[0]}
        tags: tuple[int, ...] | None = None
        if has_xml:
            if stem not in xmls:
                errors.append(f"{d / 'xml'}: no tags for image {image.name}")
            else:
                try:
                    names = read_xml_names(xmls[stem][0])
                    unknown = [n for n in names if n not in info.class_to_id]
                    if unknown:
                        errors.append(f"{xmls[stem][0]}: unknown class name(s) {unknown}; names must match dataset.classes")
                    tags = tuple(sorted(info.class_to_id[n] for n in names if n in info.class_to_id))
                except DHRError as err:
                    errors.append(str(err))
        elif json_tags is not None:
            tags = json_tags.get(stem)
            if tags is None:
                errors.append(f"{d / 'cls_labels.json'}: no tags for image {image.name}")
        if feature_dir is not None:
            errors += _check_feature(feats.get(stem), feature_dir, image.name, (height, width), uss_patch, uss_dim)
        return errors, present, counts, tags

    if feature_dir is not None and uss_dim is None:
        uss_dim = _first_dim(feats)  # every feature file must have the channels of the first
    bar = Progress(len(images), f"doctor {info.name}/{split}") if progress else None
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for stem, (errors, present, counts, tags) in zip(images, pool.map(check, list(images)), strict=True):
            rep.errors += errors
            if errors:
                rep.bad_ids.add(stem)
            class_images.update(present)
            if counts is not None:
                rep.masks += 1
                pixels += counts
            if tags is not None:
                tag_counts.update(tags)
                rep.tagged += bool(tags)
                rep.untagged += not tags
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    rep.seeds = len(set(seeds) & set(images))
    rep.features = len(set(feats) & set(images))
    if rep.untagged:
        rep.warnings.append(f"{d}: {rep.untagged} image(s) have no tag (no <object>): tag-trained models (CAM, DHR) leave them out")
    labelled = pixels[: info.num_classes].sum()
    for c, name in enumerate(info.classes):
        if class_images[c]:
            rep.mask_images[name] = class_images[c]
            rep.mask_pixels[name] = float(pixels[c] / labelled) if labelled else 0.0
        if tag_counts[c]:
            rep.tag_images[name] = tag_counts[c]
    return rep


def _json_tags(path: Path, rep: SplitReport) -> dict[str, tuple[int, ...]] | None:
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
        return {str(k): tuple(sorted({int(c) for c in v})) for k, v in table.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        rep.errors.append(f"{path}: malformed tag table ({err})")
        return None


def _first_dim(feats: dict[str, list[Path]]) -> int | None:
    """The channel count of the first readable feature file (None when none is)."""
    import torch

    for stem in sorted(feats):
        try:
            feat = torch.load(feats[stem][0], map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - unreadable files are reported one by one
            continue
        if isinstance(feat, torch.Tensor) and feat.ndim == 3:
            return int(feat.shape[0])
    return None


def _check_feature(paths: list[Path] | None, folder: Path, image_name: str, hw: tuple[int, int], patch: int,
                   dim: int | None) -> list[str]:
    if not paths:
        return [f"{folder}: no USS features for image {image_name} (export them: python -m dhr.features "
                f"ckpt=<CAUSE ckpt> split=<this split>)"]
    from dhr.data.uss import load_uss

    try:
        load_uss(paths[0], hw, patch, dim)
    except DHRError as err:
        return [str(err)]
    return []


def summary_table(reports: list[SplitReport]) -> str:
    """One line per split, as plain text."""
    head = f"{'split':<14}{'images':>8}{'masks':>8}{'tagged':>8}{'untagged':>9}{'seeds':>8}{'features':>9}{'errors':>8}{'warnings':>9}"
    rows = [head] + [
        f"{r.split:<14}{r.images:>8}{r.masks:>8}{r.tagged:>8}{r.untagged:>9}{r.seeds:>8}{r.features:>9}"
        f"{len(r.errors):>8}{len(r.warnings):>9}" for r in reports
    ]
    return "\n".join(rows)


def class_table(reports: list[SplitReport], classes: tuple[str, ...]) -> str:
    """Images per class (from masks and from tags) and pixel share, per split; classes never seen are marked."""
    cols = "".join(f"{r.split[:10] + ' img':>15}{'tag':>7}{'px %':>7}" for r in reports)
    lines = [f"{'class':<22}{cols}"]
    for name in classes:
        row = "".join(f"{r.mask_images.get(name, 0):>15}{r.tag_images.get(name, 0):>7}{100 * r.mask_pixels.get(name, 0.0):>7.2f}"
                      for r in reports)
        never = all(not r.mask_images.get(name) and not r.tag_images.get(name) for r in reports)
        lines.append(f"{name[:21]:<22}{row}{'   (never present)' if never else ''}")
    return "\n".join(lines)


def as_json(reports: list[SplitReport], dataset: str) -> dict[str, Any]:
    return {"dataset": dataset, "ok": not any(r.errors for r in reports),
            "splits": [{**asdict(r), "bad_ids": sorted(r.bad_ids)} for r in reports]}
