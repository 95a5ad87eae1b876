"""The pydensecrf backend (the ``[crf]`` extra): one image per call, on the CPU."""

from __future__ import annotations

import numpy as np

from dhr.ops.crf.params import CRFParams


def pydensecrf_posterior(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """Posterior Q (C, H, W) float32 for a uint8 (H, W, 3) image and class probabilities (C, H, W)."""
    import pydensecrf.densecrf as dcrf

    c, h, w = probs.shape
    unary = -np.log(np.clip(probs.astype(np.float32), params.clip, 1.0)).reshape(c, -1)
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=params.bilateral_compat)
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def pydensecrf_job(args: tuple[np.ndarray, np.ndarray, CRFParams]) -> np.ndarray:
    """A pool worker's call (module level, so it pickles)."""
    return pydensecrf_posterior(*args)
