"""The torch CRF backend against pydensecrf on real photographs (../shared/data VOC and COCO samples):
random crops up to 512 px, random CAM-like unaries with 2 to 21 labels. The issue's bar is 99.5 % of
pixels with the same argmax; the port follows pydensecrf's float32 steps, so it is held to more."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA
from dhr_reference.crf_cases import agreement_cases, argmax_agreement

from dhr.ops.crf import CRFParams, dense_crf, pydensecrf_installed

pytestmark = pytest.mark.slow
PARAMS = CRFParams.defaults()


def photographs(folder: str, n: int) -> list:
    paths = sorted((SHARED_DATA / folder / "image").glob("*.jpg"))[:n]
    if not paths:
        pytest.skip(f"no photographs under {SHARED_DATA / folder}")
    return paths


@pytest.mark.skipif(not pydensecrf_installed(), reason="the reference is pydensecrf (the [crf] extra)")
@pytest.mark.parametrize(("folder", "seed"), [("voc2012_sample/val", 0), ("voc2012_sample/val_crop513", 1),
                                              ("coco128_seg/train2017", 2)])
def test_torch_backend_agrees_with_pydensecrf_on_real_photographs(folder, seed):
    agreements, worst_dq = [], 0.0
    for name, image, probs in agreement_cases(photographs(folder, 3), per_image=2, seed=seed):
        ours = dense_crf(image, probs, PARAMS, backend="torch")
        theirs = dense_crf(image, probs, PARAMS, backend="pydensecrf")
        agreements.append(argmax_agreement(ours, theirs))
        worst_dq = max(worst_dq, float(np.abs(ours - theirs).max()))
        assert agreements[-1] >= 0.995, f"{name}: {100 * agreements[-1]:.3f} % of pixels agree"
    assert min(agreements) >= 0.9995 and np.mean(agreements) >= 0.9999, agreements
    assert worst_dq < 0.05, f"max |dQ| {worst_dq}"


def test_the_unaries_are_not_trivial():
    """The cases must make the CRF decide: it changes a real share of the unaries' argmax."""
    changed = []
    for _, image, probs in agreement_cases(photographs("voc2012_sample/val", 2), per_image=2, seed=3, sizes=(128,)):
        changed.append(1 - argmax_agreement(dense_crf(image, probs, PARAMS, backend="torch"), probs))
    assert np.mean(changed) > 0.05, changed
