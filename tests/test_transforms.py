"""Joint transforms keep image, masks and geometry consistent (dhr-method.md §8)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from dhr.data.transforms import (
    Geometry,
    Normalize,
    RandomCropPad,
    RandomHFlip,
    RandomResizeLong,
    train_transform,
)


def coded_sample(h: int, w: int):
    """An image whose red channel encodes x and green channel y, and a mask equal to x % 7."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.zeros_like(xx)], -1).astype(np.uint8)
    mask = (xx % 7).astype(np.uint8)
    return {"image": Image.fromarray(rgb), "masks": {"mask": Image.fromarray(mask, mode="L")},
            "geometry": Geometry(orig_hw=(h, w))}


def test_resize_rule_uses_python_round_on_the_short_side(monkeypatch):
    monkeypatch.setattr(random, "randint", lambda a, b: 500)
    sample = RandomResizeLong(320, 640)(coded_sample(375, 333))
    # long side 375 → 500; short side int(round(333 * 500 / 375)) = int(round(444.0)) = 444
    assert sample["image"].size == (444, 500) and sample["masks"]["mask"].size == (444, 500)
    assert sample["geometry"].resized_hw == (500, 444)


def test_flip_moves_image_and_mask_together(monkeypatch):
    monkeypatch.setattr(random, "random", lambda: 0.0)
    sample = RandomHFlip(0.5)(coded_sample(10, 12))
    mask = np.asarray(sample["masks"]["mask"])
    assert mask[0, 0] == 11 % 7 and sample["geometry"].flipped
    assert np.asarray(sample["image"])[0, 0, 0] == 255  # was the right-most column


@pytest.mark.parametrize("h,w", [(40, 70), (20, 25), (64, 64)])
def test_crop_pad_box_and_padding_values(h, w):
    random.seed(0)
    sample = Normalize()(coded_sample(h, w))
    image_before, mask_before = sample["image"].copy(), sample["masks"]["mask"].copy()
    out = RandomCropPad(48, ignore_index=255)(sample)
    geo = out["geometry"]
    y0, x0, y1, x1 = geo.crop_box
    sy0, sx0, sy1, sx1 = geo.src_box
    assert out["image"].shape == (48, 48, 3) and out["masks"]["mask"].shape == (48, 48)
    np.testing.assert_array_equal(out["image"][y0:y1, x0:x1], image_before[sy0:sy1, sx0:sx1])
    np.testing.assert_array_equal(out["masks"]["mask"][y0:y1, x0:x1], mask_before[sy0:sy1, sx0:sx1])
    outside = np.ones((48, 48), bool)
    outside[y0:y1, x0:x1] = False
    assert (out["masks"]["mask"][outside] == 255).all() and (out["image"][outside] == 0).all()
    assert y1 - y0 == min(h, 48) and x1 - x0 == min(w, 48)


def test_full_train_transform_keeps_mask_aligned_with_image():
    random.seed(3)
    t = train_transform(crop_size=64, resize_long=[48, 96], jitter=None)
    for _ in range(10):
        out = t(coded_sample(50, 80))
        geo = out["geometry"]
        y0, x0, y1, x1 = geo.crop_box
        # mask (x % 7 of the *resized* coordinates) must agree with the red-channel x code
        mask = out["masks"]["mask"][y0:y1, x0:x1].astype(int)
        assert mask.max() <= 6 and (out["masks"]["mask"] == 255).sum() == 64 * 64 - (y1 - y0) * (x1 - x0)
        red = out["image"][y0:y1, x0:x1, 0]
        order = np.argsort(red[0])
        if geo.flipped:
            assert red[0, 0] >= red[0, -1]
        else:
            assert red[0, 0] <= red[0, -1]
        assert len(order) == x1 - x0
