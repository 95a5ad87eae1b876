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


@dataclass(frozen=True)
class FamilyMerges:
    within: float  # share of families whose classes all have the same majority cluster
    across: float  # share of pairs of families with a majority cluster in common (lower is better)
    families_apart: float  # share of families owning a majority cluster no other family has


def family_merges(class_cluster: np.ndarray, families: list[list[int]]) -> FamilyMerges:
    """How a clustering treats families of similar classes, from (classes, clusters) pixel counts.

    DINO-based CAUSE on real images puts related classes (a family) in one cluster and keeps
    unrelated families apart; DHR's Step 3 is built for that regime (``dhr-method.md`` §5.5).
    Each class is represented by its majority cluster; classes without pixels are skipped.
    """
    counts = np.asarray(class_cluster)
    majority = {c: int(counts[c].argmax()) for fam in families for c in fam if counts[c].sum() > 0}
    clusters = [{majority[c] for c in fam if c in majority} for fam in families]
    present = [i for i, s in enumerate(clusters) if s]
    if not present:
        raise ValueError("no family class has pixels")
    within = np.mean([len(clusters[i]) == 1 and len([c for c in families[i] if c in majority]) > 1 for i in present])
    pairs = [(i, j) for a, i in enumerate(present) for j in present[a + 1:]]
    across = np.mean([bool(clusters[i] & clusters[j]) for i, j in pairs]) if pairs else 0.0
    apart = np.mean([bool(clusters[i] - set().union(*(clusters[j] for j in present if j != i))) for i in present])
    return FamilyMerges(float(within), float(across), float(apart))
