"""The official DHR metric (``evaluation.md`` §4) on exact int64 counts, torch-free.

The confusion matrix has C rows (GT class) and C + 2 columns: columns C and C + 1 collect
predictions that are not a class (255, or another value >= C) on valid pixels, so they count
as misses of the GT class and as a prediction of no class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Counts of (GT class, prediction) on the valid pixels of one image: (C, C + 2) int64.

    Columns 0..C-1 are classes, column C counts predictions equal to ``ignore_index`` and column
    C + 1 any other value >= C; both extra columns are misses. For 8-bit maps this is one
    ``bincount`` of ``gt << 8 | pred`` folded into the (C, C + 2) table.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"GT shape {gt.shape} != prediction shape {pred.shape}")
    c = num_classes
    if gt.dtype == np.uint8 and pred.dtype == np.uint8:
        key = gt.astype(np.intp)
        key <<= 8
        key |= pred
        joint = np.bincount(key.ravel(), minlength=65536).reshape(256, 256)
    else:
        g = gt.astype(np.int64).ravel()
        p = pred.astype(np.int64).ravel()
        if g.min(initial=0) < 0 or g.max(initial=0) > 255 or p.min(initial=0) < 0 or p.max(initial=0) > 255:
            raise ValueError("label maps must hold values in 0..255")
        joint = np.bincount(g * 256 + p, minlength=65536).reshape(256, 256)
    bad_rows = [r for r in np.flatnonzero(joint[c:].any(axis=1)) + c if r != ignore_index]
    if bad_rows:
        raise ValueError(f"GT holds value(s) {[int(v) for v in bad_rows[:5]]} that are neither class ids < {c} nor {ignore_index}")
    rows = joint[:c]
    conf = np.zeros((c, c + 2), dtype=np.int64)
    conf[:, :c] = rows[:, :c]
    beyond = rows[:, c:].sum(axis=1)
    if c <= ignore_index < 256:
        conf[:, c] = rows[:, ignore_index]
    conf[:, c + 1] = beyond - conf[:, c]
    return conf


@dataclass(frozen=True)
class Scores:
    """Per-class IoU (percent), FPR and FNR with their NaN-aware means."""

    iou: np.ndarray
    fpr: np.ndarray
    fnr: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def miou(self) -> float:
        return _nanmean(self.iou)

    @property
    def mfpr(self) -> float:
        return _nanmean(self.fpr)

    @property
    def mfnr(self) -> float:
        return _nanmean(self.fnr)


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def scores_from_confusion(conf: np.ndarray) -> Scores:
    """IoU/FPR/FNR over the union per class; a class with an empty union is NaN.

    ``conf`` is (C, C) or (C, C + k); extra columns hold misses (no class predicted).
    """
    conf = np.asarray(conf, dtype=np.int64)
    c = conf.shape[0]
    tp = np.diag(conf[:, :c])
    t = conf.sum(axis=1)
    p = conf[:, :c].sum(axis=0)
    fp = p - tp
    fn = t - tp
    union = (tp + fp + fn).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, 100.0 * tp / union, np.nan)
        fpr = np.where(union > 0, fp / union, np.nan)
        fnr = np.where(union > 0, fn / union, np.nan)
    return Scores(iou=iou, fpr=fpr, fnr=fnr, tp=tp, fp=fp, fn=fn)


def summary_line(tag: str, scores: Scores) -> str:
    """The official one-line summary, byte-exact."""
    return f"{tag} | mIoU: {scores.miou:.1f}%, mFPR: {scores.mfpr:.3f}, mFNR: {scores.mfnr:.3f}"
