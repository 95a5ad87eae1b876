"""Unsupervised segmentation scoring: cluster-to-class Hungarian matching (``cause-method.md`` §8)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cluster_histogram(pred: np.ndarray, gt: np.ndarray, n: int) -> np.ndarray:
    """(n, n) int64 counts of (predicted cluster, GT class) over pixels with 0 <= gt < n."""
    pred = pred.ravel().astype(np.int64)
    gt = gt.ravel().astype(np.int64)
    keep = (gt >= 0) & (gt < n) & (pred >= 0) & (pred < n)
    return np.bincount(pred[keep] * n + gt[keep], minlength=n * n).reshape(n, n)


@dataclass(frozen=True)
class MatchedScores:
    assignment: np.ndarray  # cluster index → class index
    iou: np.ndarray  # per class, percent, NaN where the class is absent and never predicted
    miou: float
    pixel_accuracy: float


def hungarian_scores(hist: np.ndarray) -> MatchedScores:
    """Match clusters to classes maximising agreement, then IoU per class and pixel accuracy."""
    from scipy.optimize import linear_sum_assignment

    hist = np.asarray(hist, dtype=np.int64)
    rows, cols = linear_sum_assignment(hist, maximize=True)
    assignment = np.empty(hist.shape[0], dtype=np.int64)
    assignment[rows] = cols
    matched = np.zeros_like(hist)
    np.add.at(matched, assignment, hist)  # rows now indexed by class
    tp = np.diag(matched).astype(np.float64)
    union = matched.sum(0) + matched.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, 100.0 * tp / union, np.nan)
    total = matched.sum()
    return MatchedScores(assignment, iou, float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
                         float(100.0 * tp.sum() / total) if total else float("nan"))
