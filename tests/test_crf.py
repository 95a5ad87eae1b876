"""Dense CRF op: posteriors normalised, edges respected, pool equals serial, the release's
de-normalisation on every level, parameters validated with the key named."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf")

from dhr.ops.crf import CRFParams, CRFPool, denormalize, dense_crf, dense_crf_many  # noqa: E402

PARAMS = CRFParams.defaults()


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
    q = dense_crf(image, probs, PARAMS)
    assert q.shape == probs.shape and np.allclose(q.sum(0), 1, atol=1e-4)
    before = (probs.argmax(0) == truth).mean()
    after = (q.argmax(0) == truth).mean()
    assert before < 0.97 and after > 0.99 and after > before


def test_pool_matches_serial():
    cases = [two_region_case(s) for s in range(3)]
    serial = [dense_crf(im, p, PARAMS) for im, p, _ in cases]
    pooled = dense_crf_many([c[0] for c in cases], [c[1] for c in cases], CRFParams.defaults(processes=2))
    with CRFPool(CRFParams.defaults(processes=2)) as pool:  # a persistent pool, called twice
        again = [pool([c[0] for c in cases], [c[1] for c in cases]) for _ in range(2)]
    for a, b, c, d in zip(serial, pooled, *again, strict=True):
        np.testing.assert_allclose(a, b)
        np.testing.assert_allclose(a, c)
        np.testing.assert_allclose(a, d)


def test_parameters_change_the_result_and_are_validated():
    from dhr.errors import DHRError

    image, probs, _ = two_region_case()
    assert not np.allclose(dense_crf(image, probs, PARAMS), dense_crf(image, probs, CRFParams.defaults(bilateral_srgb=30.0)))
    for key, value in (("bilateral_sxy", 0), ("iterations", 0), ("denorm", "floor"), ("processes", -1), ("clip", 2)):
        with pytest.raises(DHRError, match=f"crf.{key}"):
            CRFParams.defaults(**{key: value})
    with pytest.raises(DHRError, match="crf.bogus"):
        CRFParams.defaults(bogus=1)


def test_denormalize_truncates():
    from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

    pixel = np.array([100.7, 0.2, 254.9]) / 255.0
    normed = ((pixel - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32).reshape(3, 1, 1)
    assert denormalize(normed, "truncate")[0, 0].tolist() == [100, 0, 254]
    assert denormalize(normed, "round")[0, 0].tolist() == [101, 0, 255]


def test_denormalize_is_the_release_float64_arithmetic_on_every_level():
    """All 256 levels of each channel, normalised in float32 as the data loader does (dhr-method.md §5.1)."""
    from dhr.reference.relabel import release_denormalize
    from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

    levels = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)  # (256, 3): every level of R, G, B
    normed = ((levels / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).T[:, None, :]  # (3, 1, 256)
    ours = denormalize(normed, "truncate")
    np.testing.assert_array_equal(ours, release_denormalize(normed))
    f32 = np.floor(np.clip((normed.transpose(1, 2, 0) * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN))
                           * np.float32(255), 0, 255)).astype(np.uint8)
    moved = (f32 != ours).sum(axis=(0, 1))
    assert (moved > 10).all(), f"float32 arithmetic should move many levels per channel (moved {moved.tolist()})"


def test_hard_label_crf_snaps_a_shifted_mask_to_the_image_edge():
    from dhr.ops.crf import crf_refine_labels, labels_to_probs

    image, _, truth = two_region_case()
    shifted = np.roll(truth, 4, axis=1).astype(np.uint8)  # boundary 4 px off the colour edge
    shifted[:, :4] = 0
    shifted[0, 0] = 255
    probs = labels_to_probs(shifted, 2)
    assert np.allclose(probs.sum(0), 1) and probs[:, 0, 0].tolist() == [0.5, 0.5]
    refined = crf_refine_labels(image, shifted, 2, PARAMS)
    assert (refined == truth).mean() > (shifted == truth).mean()
    assert (refined == truth).mean() > 0.99
