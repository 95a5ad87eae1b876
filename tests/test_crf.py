"""Dense CRF op: posteriors normalised, edges respected, pool equals serial."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf")

from dhr.ops.crf import denormalize, dense_crf, dense_crf_many  # noqa: E402


def two_region_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 40, 40)
    image[:, w // 2 :] = (40, 40, 200)
    truth = np.zeros((h, w), int)
    truth[:, w // 2 :] = 1
    p1 = np.clip(truth * 0.6 + 0.2 + rng.normal(0, 0.25, (h, w)), 0.01, 0.99)  # noisy, but informative
    return image, np.stack([1 - p1, p1]).astype(np.float32), truth


def test_posteriors_sum_to_one_and_clean_up_noise():
    image, probs, truth = two_region_case()
    q = dense_crf(image, probs)
    assert q.shape == probs.shape and np.allclose(q.sum(0), 1, atol=1e-4)
    before = (probs.argmax(0) == truth).mean()
    after = (q.argmax(0) == truth).mean()
    assert before < 0.97 and after > 0.99 and after > before


def test_pool_matches_serial():
    cases = [two_region_case(s) for s in range(3)]
    serial = [dense_crf(im, p) for im, p, _ in cases]
    pooled = dense_crf_many([c[0] for c in cases], [c[1] for c in cases], processes=2)
    for a, b in zip(serial, pooled, strict=True):
        np.testing.assert_allclose(a, b)


def test_denormalize_truncates():
    from dhr.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    pixel = np.array([100.7, 0.2, 254.9]) / 255.0
    normed = ((pixel - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32).reshape(3, 1, 1)
    assert denormalize(normed)[0, 0].tolist() == [100, 0, 254]
    assert denormalize(normed, "round")[0, 0].tolist() == [101, 0, 255]


def test_hard_label_crf_snaps_a_shifted_mask_to_the_image_edge():
    from dhr.ops.crf import crf_refine_labels, labels_to_probs

    image, _, truth = two_region_case()
    shifted = np.roll(truth, 4, axis=1).astype(np.uint8)  # boundary 4 px off the colour edge
    shifted[:, :4] = 0
    shifted[0, 0] = 255
    probs = labels_to_probs(shifted, 2)
    assert np.allclose(probs.sum(0), 1) and probs[:, 0, 0].tolist() == [0.5, 0.5]
    refined = crf_refine_labels(image, shifted, 2)
    assert (refined == truth).mean() > (shifted == truth).mean()
    assert (refined == truth).mean() > 0.99
