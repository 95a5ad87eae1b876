"""The official metric (evaluation.md §4) against hand-computed cases and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dhr.ops.metrics import confusion, scores_from_confusion, summary_line


def two_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    # 3 classes (0 = background). Image A: 2x4, image B: 2x3 with an ignore pixel.
    gt_a = np.array([[0, 0, 1, 1], [0, 1, 1, 255]], dtype=np.uint8)
    pr_a = np.array([[0, 1, 1, 1], [0, 0, 1, 2]], dtype=np.uint8)
    gt_b = np.array([[0, 0, 0], [1, 1, 255]], dtype=np.uint8)
    pr_b = np.array([[0, 0, 1], [255, 1, 0]], dtype=np.uint8)
    return [gt_a, gt_b], [pr_a, pr_b]


def test_hand_computed_two_images():
    gts, preds = two_images()
    conf = sum(confusion(g, p, 3) for g, p in zip(gts, preds, strict=True))
    s = scores_from_confusion(conf)
    # Valid pixels: A: 7, B: 5. Class 0: T = 3 + 3 = 6, TP = 2 + 2 = 4, P = 3 + 2 = 5.
    # Class 1: T = 4 + 2 = 6, TP = 3 + 1 = 4, P = 4 + 2 = 6 (B's 255 prediction is a miss).
    # Class 2: T = 0, P = 0 (A's prediction 2 sits on an ignore pixel) → NaN.
    assert s.tp.tolist() == [4, 4, 0]
    assert s.fp.tolist() == [1, 2, 0]
    assert s.fn.tolist() == [2, 2, 0]
    assert s.iou[0] == pytest.approx(100 * 4 / 7)
    assert s.iou[1] == pytest.approx(100 * 4 / 8)
    assert math.isnan(s.iou[2]) and math.isnan(s.fpr[2]) and math.isnan(s.fnr[2])
    assert s.miou == pytest.approx((100 * 4 / 7 + 50) / 2)  # NaN class excluded from the mean
    assert s.mfpr == pytest.approx((1 / 7 + 2 / 8) / 2)
    assert s.mfnr == pytest.approx((2 / 7 + 2 / 8) / 2)
    for i in range(2):
        assert s.iou[i] / 100 + s.fpr[i] + s.fnr[i] == pytest.approx(1.0)


def test_prediction_255_and_out_of_range_are_misses():
    gt = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    pred = np.array([[255, 7, 0, 0]], dtype=np.uint8)
    conf = confusion(gt, pred, 3)
    assert conf.shape == (3, 5)
    assert conf[1, 3] == 1 and conf[1, 4] == 1  # 255 column, other-out-of-range column
    s = scores_from_confusion(conf)
    assert s.fn[1] == 2 and s.tp[1] == 0 and s.fp.sum() == 0
    assert s.iou[1] == 0.0 and s.fnr[1] == 1.0


def test_ignored_gt_pixels_do_not_count():
    gt = np.full((4, 4), 255, dtype=np.uint8)
    gt[0, 0] = 1
    pred = np.full((4, 4), 2, dtype=np.uint8)
    pred[0, 0] = 1
    s = scores_from_confusion(confusion(gt, pred, 3))
    assert s.iou[1] == 100.0 and math.isnan(s.iou[2])


def test_gt_value_out_of_range_raises():
    with pytest.raises(ValueError, match="neither class ids"):
        confusion(np.array([[5]], np.uint8), np.array([[0]], np.uint8), 3)


def test_absent_class_predicted_gets_zero_iou_not_nan():
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 2], [0, 0]], np.uint8)
    s = scores_from_confusion(confusion(gt, pred, 3))
    assert s.iou[2] == 0.0 and s.fpr[2] == 1.0 and math.isnan(s.iou[1])


def test_matches_torchmetrics_on_random_masks():
    import torch
    from torchmetrics.functional.classification import multiclass_jaccard_index

    rng = np.random.default_rng(0)
    c = 6
    gt = rng.integers(0, c, (4, 37, 41)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, c, gt.shape).astype(np.uint8)
    conf = sum(confusion(g, p, c) for g, p in zip(gt, pred, strict=True))
    ours = scores_from_confusion(conf).iou / 100
    ref = multiclass_jaccard_index(torch.from_numpy(pred).long(), torch.from_numpy(gt).long(), num_classes=c,
                                   ignore_index=255, average="none")
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)


def test_summary_line_is_byte_exact():
    gts, preds = two_images()
    s = scores_from_confusion(sum(confusion(g, p, 3) for g, p in zip(gts, preds, strict=True)))
    assert summary_line("DHR", s) == "DHR | mIoU: 53.6%, mFPR: 0.196, mFNR: 0.268"
