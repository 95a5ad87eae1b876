"""Score a folder of predicted label PNGs against GT (``evaluation.md`` §§4-5), torch-free.

Images are decoded and counted in a process pool in chunks; each worker returns one summed
confusion matrix, so memory stays flat in the number of images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dhr.errors import DHRError
from dhr.ops.metrics import Scores, confusion, scores_from_confusion
from dhr.utils.io import read_label_png
from dhr.utils.pool import fork_pool, worker_count


@dataclass
class EvalResult:
    """Summed counts plus the bookkeeping the summary reports."""

    conf: np.ndarray
    expected: int = 0
    evaluated: int = 0
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    out_of_range_pixels: int = 0

    @property
    def scores(self) -> Scores:
        return scores_from_confusion(self.conf)


@dataclass(frozen=True)
class _Job:
    pred_dir: str
    gt_dir: str
    num_classes: int
    ignore_index: int
    skip_values: tuple[int, ...] | None  # None: never skip background-only images


def _score_chunk(job: _Job, ids: Sequence[str]) -> EvalResult:
    c = job.num_classes
    result = EvalResult(conf=np.zeros((c, c + 2), dtype=np.int64))
    counted = np.ones(c, dtype=bool)  # GT classes that make an image count under the skip rule
    if job.skip_values is not None:
        counted[[v for v in job.skip_values if v < c]] = False

    def skipped(gt_classes_present: np.ndarray) -> bool:
        return job.skip_values is not None and not gt_classes_present[counted].any()

    for image_id in ids:
        gt_path = os.path.join(job.gt_dir, image_id + ".png")
        gt = read_label_png(gt_path)
        pred_path = os.path.join(job.pred_dir, image_id + ".png")
        pred = read_label_png(pred_path) if os.path.exists(pred_path) else None
        if pred is None or pred.shape != gt.shape:
            # rare path: decide the skip rule from the GT alone, then report the problem
            if skipped(np.bincount(gt.ravel(), minlength=256)[:c] > 0):
                result.skipped.append(image_id)
                continue
            result.expected += 1
            if pred is None:
                result.missing.append(image_id)
                continue
            raise DHRError(
                f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]} but GT {gt_path} is "
                f"{gt.shape[1]}x{gt.shape[0]} (WxH); predictions must have the image size"
            )
        try:
            counts = confusion(gt, pred, c, job.ignore_index)
        except ValueError as err:
            raise DHRError(f"{gt_path}: {err}; is dataset= the dataset these masks belong to ({c} classes)?") from None
        if skipped(counts.sum(axis=1) > 0):
            result.skipped.append(image_id)
            continue
        result.expected += 1
        result.conf += counts
        result.out_of_range_pixels += int(counts[:, c + 1].sum())
        result.evaluated += 1
    return result


def folder_mix_ups(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, ids: Sequence[str], ignore_index: int,
                   sample: int = 32) -> list[str]:
    """Warnings when the prediction folder looks like ground truth (or the two are swapped), from a
    sample of image pairs: identical maps, or the ignore value in predictions but not in the GT."""
    step = max(1, len(ids) // sample)
    same = pairs = pred_ignore = gt_ignore = pixels = 0
    for image_id in list(ids)[::step][:sample]:
        pred_path = os.path.join(pred_dir, image_id + ".png")
        if not os.path.exists(pred_path):
            continue
        pred, gt = read_label_png(pred_path), read_label_png(os.path.join(gt_dir, image_id + ".png"))
        if pred.shape != gt.shape:
            continue
        pairs += 1
        same += bool(np.array_equal(pred, gt))
        pred_ignore += int((pred == ignore_index).sum())
        gt_ignore += int((gt == ignore_index).sum())
        pixels += pred.size
    warnings = []

    def dataset_mask_folder(folder: str | os.PathLike) -> bool:
        return os.path.basename(os.path.normpath(folder)) == "mask" and os.path.isdir(
            os.path.join(os.path.dirname(os.path.normpath(folder)), "image"))

    if dataset_mask_folder(pred_dir) and not dataset_mask_folder(gt_dir):
        warnings.append(f"pred={pred_dir} is a dataset's ground-truth folder (beside image/) and gt={gt_dir} is not: "
                        "pred= and gt= look swapped (FPR and FNR exchange)")
    elif dataset_mask_folder(pred_dir):
        warnings.append(f"pred={pred_dir} is a dataset's ground-truth folder (beside image/): is pred= the GT?")
    if pairs and same == pairs:
        warnings.append(f"the predictions in {pred_dir} equal the GT in {gt_dir} on all {pairs} sampled images: "
                        "is pred= the GT folder? (the scores below are GT against itself)")
    elif pixels and pred_ignore > 0.001 * pixels and gt_ignore == 0:
        warnings.append(f"{100 * pred_ignore / pixels:.1f} % of the sampled prediction pixels are {ignore_index} "
                        f"(ignore) but the GT has none: pred= and gt= look swapped (FPR and FNR exchange)")
    return warnings


def _score_chunk_star(args: tuple[_Job, Sequence[str]]) -> EvalResult:
    return _score_chunk(*args)


def evaluate_folder(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    num_classes: int,
    ignore_index: int = 255,
    background_id: int | None = 0,
    skip_background_only: bool = True,
    ids: Sequence[str] | None = None,
    workers: int | None = None,
) -> EvalResult:
    """Accumulate the confusion of every GT PNG in ``gt_dir`` (or of ``ids``) with its prediction.

    ``skip_background_only`` drops images whose GT holds only background/ignore (official rule).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not gt_dir.is_dir():
        raise DHRError(f"{gt_dir}: GT folder not found (set gt=... or paths.data_root)")
    if not pred_dir.is_dir():
        raise DHRError(f"{pred_dir}: prediction folder not found (set pred=...)")
    if ids is None:
        ids = sorted(p.stem for p in gt_dir.glob("*.png"))
    if not ids:
        raise DHRError(f"{gt_dir}: no GT PNGs to evaluate")
    skip_values = None
    if skip_background_only:
        skip_values = tuple(v for v in (background_id, ignore_index) if v is not None)
    job = _Job(str(pred_dir), str(gt_dir), num_classes, ignore_index, skip_values)
    workers = worker_count(workers, len(ids))
    total = EvalResult(conf=np.zeros((num_classes, num_classes + 2), dtype=np.int64))
    if workers == 1:
        parts = [_score_chunk(job, ids)]
    else:
        n_chunks = min(len(ids), workers * 8)
        chunks = [ids[i::n_chunks] for i in range(n_chunks)]
        with fork_pool(workers) as pool:
            parts = pool.map(_score_chunk_star, [(job, ch) for ch in chunks], chunksize=1)
    for part in parts:
        total.conf += part.conf
        total.expected += part.expected
        total.evaluated += part.evaluated
        total.skipped += part.skipped
        total.missing += part.missing
        total.out_of_range_pixels += part.out_of_range_pixels
    total.skipped.sort()
    total.missing.sort()
    return total
