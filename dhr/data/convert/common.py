"""What every converter shares: the sample record, the resumable writer and the split-size check.

A converter lists :class:`Sample` records per output split and turns one into a class-id mask;
:func:`convert` writes ``{out}/{DATA}/{split}/{image,mask,xml}`` in a process pool, keeping files
that already exist (so an interrupted run resumes), writing each one atomically, and collecting
every problem into one error at the end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dhr.data.layout import DatasetInfo
from dhr.data.tags import read_xml_names, write_xml
from dhr.errors import DHRError
from dhr.utils.io import atomic_write_bytes, atomic_write_json, save_label_png
from dhr.utils.pool import fork_pool, worker_count
from dhr.utils.progress import Progress

log = logging.getLogger(__name__)
MAX_LISTED = 10


@dataclass(frozen=True)
class Sample:
    """One image of an output split: where its image lies and what its mask is made from.

    ``mask_source`` is whatever the converter's ``read_mask`` needs (a PNG or ``.mat`` path, a list
    of COCO annotations); None writes no mask (a test split). ``xml_source`` is an official VOC
    annotation copied verbatim; otherwise the tags are the classes of the mask (``objects`` when
    the converter knows boxes, e.g. COCO instances).
    """

    split: str
    image_id: str
    image: Path
    mask_source: Any = None
    xml_source: Path | None = None
    objects: tuple[tuple[str, tuple[float, float, float, float]], ...] | None = None


@dataclass
class Plan:
    """The samples of every output split and the official split sizes they are checked against."""

    splits: dict[str, list[Sample]]
    official_sizes: Mapping[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def boxes_of(label: np.ndarray, info: DatasetInfo) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Tag objects of a mask: one per class present (background and ignore excluded), its bounding box."""
    objects = []
    for class_id in np.unique(label).tolist():
        if class_id >= info.num_classes or class_id == info.background_id:
            continue
        ys, xs = np.nonzero(label == class_id)
        box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
        objects.append((info.classes[class_id], box))
    return objects


def find_root(base: Path, candidates: Sequence[str], marker: str, what: str, fix: str) -> Path:
    """The first of ``base/candidate`` that holds ``marker``; a named error listing where it looked."""
    tried = [base / c if c else base for c in candidates]
    for root in tried:
        if (root / marker).exists():
            return root
    listed = ", ".join(str(t / marker) for t in tried)
    raise DHRError(f"{base}: not {what} (looked for {listed}). {fix}")


def read_id_list(path: Path) -> list[str]:
    """Ids of a split list (one per line, extra columns ignored)."""
    if not path.is_file():
        raise DHRError(f"{path}: split list not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def check_sizes(plan: Plan, strict: bool) -> None:
    """Compare the planned split sizes with the official ones: a warning, or with ``strict`` an error."""
    off = []
    for split, samples in plan.splits.items():
        expected = plan.official_sizes.get(split)
        if expected is not None and len(samples) != expected:
            off.append(f"{split}: {len(samples)} images, the official release has {expected}")
    if not off:
        return
    message = "split sizes differ from the official ones (an incomplete download?): " + "; ".join(off)
    if strict:
        raise DHRError(message + ". Complete the download, or pass strict=false to convert what is there")
    log.warning(message)


def refuse_overlap(target: Path, sources: Sequence[Path]) -> None:
    """Refuse a tree that would lie inside a download or hold one (links resolved): converters never touch the downloads."""
    out = target.resolve()
    for src in sources:
        s = src.resolve()
        if out == s or s in out.parents or out in s.parents:
            raise DHRError(f"{target} (resolved {out}) overlaps the source {src}; write the converted tree to another out=")


def select_splits(splits: Sequence[str] | None, available: Sequence[str], name: str) -> list[str]:
    """The requested output splits (all by default); an unknown one is an error listing the dataset's."""
    wanted = list(splits) if splits else list(available)
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise DHRError(f"splits={unknown}: {name} has {sorted(available)}")
    return wanted


def check_options(out_dir: Path, options: Mapping[str, Any], overwrite: bool) -> None:
    """A resumed conversion must use the options of the files already written (``{DATA}/.prepare.json``)."""
    path = out_dir / ".prepare.json"
    if path.is_file() and not overwrite:
        before = json.loads(path.read_text())
        if before != dict(options):
            changed = sorted(k for k in set(before) | set(options) if before.get(k) != options.get(k))
            raise DHRError(f"{path}: this tree was converted with other options ({', '.join(f'{k}={before.get(k)}' for k in changed)}); "
                           "pass overwrite=true to rewrite it with the new ones, or write to another out=")
    atomic_write_json(path, dict(options))


def _outputs(out_dir: Path, sample: Sample) -> tuple[Path, Path | None, Path]:
    split_dir = out_dir / sample.split
    image = split_dir / "image" / f"{sample.image_id}{sample.image.suffix.lower()}"
    mask = split_dir / "mask" / f"{sample.image_id}.png" if sample.mask_source is not None else None
    return image, mask, split_dir / "xml" / f"{sample.image_id}.xml"


def convert_one(sample: Sample, *, out_dir: Path, info: DatasetInfo, read_mask: Callable[[Any], np.ndarray],
                overwrite: bool) -> tuple[str, str | None]:
    """Write one sample; returns ("kept" | "written", problem or None). Never raises for a bad file."""
    image_out, mask_out, xml_out = _outputs(out_dir, sample)
    targets = [p for p in (image_out, mask_out, xml_out) if p is not None]
    if not overwrite and all(p.is_file() for p in targets):
        return "kept", None
    try:
        try:
            with Image.open(sample.image) as im:
                im.load()  # a truncated download fails here, not in training
                width, height = im.size
        except FileNotFoundError:
            raise DHRError(f"{sample.image}: image file not found") from None
        except (OSError, SyntaxError) as err:
            raise DHRError(f"{sample.image}: cannot read image ({err}); re-download it") from None
        label = None
        if sample.mask_source is not None:
            origin = sample.mask_source if isinstance(sample.mask_source, (str, Path)) else sample.image
            try:
                label = np.asarray(read_mask(sample.mask_source))
            except DHRError:
                raise
            except Exception as err:  # noqa: BLE001 - any unreadable label is this file's problem, not the run's
                raise DHRError(f"{origin}: cannot read the label ({type(err).__name__}: {err}); re-extract it") from None
            if label.shape != (height, width):
                raise DHRError(f"{origin}: label is {label.shape[1]}x{label.shape[0]} but "
                               f"{sample.image} is {width}x{height} (WxH)")
            bad = np.unique(label[(label >= info.num_classes) & (label != info.ignore_index)])
            if bad.size:
                raise DHRError(f"{origin}: values {bad[:8].tolist()} are not class ids "
                               f"0..{info.num_classes - 1} or {info.ignore_index} after conversion")
        if sample.xml_source is not None and sample.xml_source.is_file():
            unknown = [n for n in read_xml_names(sample.xml_source) if n not in info.class_to_id]
            if unknown:
                raise DHRError(f"{sample.xml_source}: unknown class name(s) {unknown} for {info.name}")
            xml_bytes: bytes | None = sample.xml_source.read_bytes()
        else:
            xml_bytes = None
        atomic_write_bytes(image_out, sample.image.read_bytes())
        if label is not None and mask_out is not None:
            save_label_png(mask_out, label.astype(np.uint8), info.palette_array)
        if xml_bytes is not None:
            atomic_write_bytes(xml_out, xml_bytes)
        else:
            objects = list(sample.objects) if sample.objects is not None else (boxes_of(label, info) if label is not None else [])
            write_xml(xml_out, filename=image_out.name, size=(height, width), objects=objects)
    except DHRError as err:
        return "failed", str(err)
    return "written", None


def write_class_json(out_dir: Path, info: DatasetInfo) -> None:
    """``{DATA}/{DATA}.json``: the class list the official code and ``dhr`` read (evaluation.md §2)."""
    path = out_dir / f"{info.name}.json"
    want = {"names": list(info.classes), "ignore": info.ignore_index}
    if path.is_file():
        try:
            if json.loads(path.read_text()) == want:
                return
        except json.JSONDecodeError:
            pass
        raise DHRError(f"{path}: exists with another class list; remove it or write to another out=")
    atomic_write_json(path, want)


def convert(plan: Plan, *, out_root: Path, info: DatasetInfo, read_mask: Callable[[Any], np.ndarray],
            overwrite: bool = False, workers: int | None = None) -> dict[str, dict[str, int]]:
    """Write every planned sample; returns per split how many were written and kept.

    Problems (unreadable or mis-sized files, unknown names) do not stop the others; they are raised
    together at the end, naming each file, so one run lists everything to fix.
    """
    out_dir = out_root / info.name
    write_class_json(out_dir, info)
    for split in plan.splits:
        _check_id_collisions(out_dir / split / "image", {s.image_id: s.image.suffix.lower() for s in plan.splits[split]})
    samples = [s for split in plan.splits.values() for s in split]
    counts = {split: {"written": 0, "kept": 0, "failed": 0} for split in plan.splits}
    problems: list[str] = []
    job = partial(convert_one, out_dir=out_dir, info=info, read_mask=read_mask, overwrite=overwrite)
    bar = Progress(len(samples), f"prepare {info.name}")
    n = worker_count(workers, len(samples))
    try:
        results = map(job, samples) if n == 1 else None
        if results is None:
            with fork_pool(n) as pool:
                for sample, (status, problem) in zip(samples, pool.imap(job, samples, chunksize=16), strict=True):
                    _tally(counts, problems, sample, status, problem, bar)
        else:
            for sample, (status, problem) in zip(samples, results, strict=True):
                _tally(counts, problems, sample, status, problem, bar)
    finally:
        bar.close()
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DHRError(f"{len(problems)} of {len(samples)} images could not be converted "
                       f"(the others are written; rerun to resume):\n  {listed}{more}")
    return counts


def _tally(counts: dict[str, dict[str, int]], problems: list[str], sample: Sample, status: str,
           problem: str | None, bar: Progress) -> None:
    counts[sample.split][status] += 1
    if problem:
        problems.append(problem)
    bar.update(1)


def _check_id_collisions(image_dir: Path, planned: Mapping[str, str]) -> None:
    """An id already written with another extension would become two files of one id: refuse."""
    if not image_dir.is_dir():
        return
    clashes = [p.name for p in image_dir.iterdir() if p.stem in planned and p.suffix.lower() != planned[p.stem]]
    if clashes:
        raise DHRError(f"{image_dir}: {clashes[:5]} have the ids of images about to be written with another "
                       "extension; remove them (or write to an empty out=)")

