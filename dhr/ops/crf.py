"""Dense CRF (``dhr-method.md`` §7) on pydensecrf2, for one image or many in a process pool.

Unary -log(clip(p, 1e-5, 1)) with no renormalisation; Gaussian (sxy 1, compat 3); bilateral
(sxy 67, srgb 3, compat 4) on the uint8 RGB image; 10 mean-field iterations. Q sums to 1 per
pixel. CPU only: a 512x512 image with 21 labels takes seconds, so batches go to a pool.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dhr.data.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class CRFParams:
    iterations: int = 10
    gauss_sxy: float = 1.0
    gauss_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0
    clip: float = 1e-5


def denormalize(image_chw: np.ndarray, mode: str = "truncate") -> np.ndarray:
    """ImageNet-normalised (3, H, W) float → contiguous uint8 (H, W, 3); ``truncate`` as the release."""
    x = image_chw.transpose(1, 2, 0) * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)
    x = np.clip(x * 255.0, 0, 255)
    x = np.round(x) if mode == "round" else np.floor(x)
    return np.ascontiguousarray(x.astype(np.uint8))


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Posterior Q (C, H, W) float32 for a uint8 (H, W, 3) image and class probabilities (C, H, W)."""
    import pydensecrf.densecrf as dcrf

    c, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"CRF image is {image.shape[:2]} but probabilities are {(h, w)}")
    unary = -np.log(np.clip(probs.astype(np.float32), params.clip, 1.0)).reshape(c, -1)
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=params.bilateral_compat)
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def _crf_star(args: tuple[np.ndarray, np.ndarray, CRFParams]) -> np.ndarray:
    return dense_crf(*args)


def dense_crf_many(images: Sequence[np.ndarray], probs: Sequence[np.ndarray], params: CRFParams = CRFParams(),
                   processes: int | None = None, progress: bool = False) -> list[np.ndarray]:
    """``dense_crf`` over many images, in a process pool of ``processes`` (default: all cores)."""
    jobs = [(im, p, params) for im, p in zip(images, probs, strict=True)]
    processes = max(1, min(processes or os.cpu_count() or 1, len(jobs)))
    if processes == 1:
        it = map(_crf_star, jobs)
        pool = None
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        pool = ctx.Pool(processes)
        it = pool.imap(_crf_star, jobs)
    try:
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, total=len(jobs), desc="dense CRF", unit="img")
        return list(it)
    finally:
        if pool is not None:
            pool.close()
            pool.join()


def labels_to_probs(labels: np.ndarray, n_labels: int, gt_prob: float = 0.7, ignore_index: int = 255) -> np.ndarray:
    """Soft unary from a hard label map: ``gt_prob`` on the label, the rest spread evenly; ignore → uniform."""
    if not 0.0 < gt_prob < 1.0:
        raise ValueError(f"gt_prob must lie in (0, 1), got {gt_prob}")
    h, w = labels.shape
    probs = np.full((n_labels, h, w), (1.0 - gt_prob) / max(1, n_labels - 1), dtype=np.float32)
    valid = (labels != ignore_index) & (labels < n_labels)
    ys, xs = np.nonzero(valid)
    probs[labels[valid].astype(np.int64), ys, xs] = gt_prob
    probs[:, ~valid] = 1.0 / n_labels
    return probs


def crf_refine_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, params: CRFParams = CRFParams(),
                      gt_prob: float = 0.7, ignore_index: int = 255) -> np.ndarray:
    """Dense CRF on a hard label map (e.g. seed masks): refined (H, W) uint8 labels."""
    q = dense_crf(image, labels_to_probs(labels, n_labels, gt_prob, ignore_index), params)
    return q.argmax(0).astype(np.uint8)


class CRFPool:
    """A persistent worker pool for the per-step CRFs of DHR training (created on first use).

    ``processes`` <= 1 runs serially; tiny batches also run serially, where a pool costs more
    than it saves. Callable as ``pool(images, probs) -> list of Q``.
    """

    def __init__(self, processes: int | None = None, params: CRFParams = CRFParams()) -> None:
        self.processes = max(1, processes if processes is not None else os.cpu_count() or 1)
        self.params = params
        self._pool = None

    def __call__(self, images: Sequence[np.ndarray], probs: Sequence[np.ndarray]) -> list[np.ndarray]:
        jobs = [(im, p, self.params) for im, p in zip(images, probs, strict=True)]
        if self.processes == 1 or len(jobs) == 1:
            return [_crf_star(job) for job in jobs]
        if self._pool is None:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            self._pool = ctx.Pool(self.processes)
        return self._pool.map(_crf_star, jobs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __getstate__(self) -> dict:  # a module holding a pool can still be pickled (ddp_spawn)
        return {**self.__dict__, "_pool": None}
