"""Dense CRF (``dhr-method.md`` §7) on pydensecrf2: one parameter set, one de-normalisation, one pool.

Unary -log(clip(p, clip, 1)) with no renormalisation; Gaussian (sxy, compat) and bilateral
(sxy, srgb, compat) Potts terms on the uint8 RGB image; ``iterations`` mean-field steps; Q sums
to 1 per pixel. Every caller (relabelling, DHR masks, CAM seeds, CAUSE evaluation) reads the
same :class:`CRFParams`, built from the ``crf`` config node, and runs through :class:`CRFPool`.
CPU only: a 512x512 image with 21 labels takes seconds, so batches go to worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dhr.errors import DHRError
from dhr.utils.config import conf_node, from_mapping, merge
from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD
from dhr.utils.pool import fork_pool, worker_count

DENORM_MODES = ("truncate", "round")


@dataclass(frozen=True)
class CRFParams:
    """The ``crf`` config node (``conf/crf/default.yaml``); ``processes`` None = all cores."""

    iterations: int
    gauss_sxy: float
    gauss_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    clip: float
    denorm: str
    processes: int | str | None

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise DHRError(f"crf.iterations={self.iterations!r}: use a whole number >= 1")
        for key in ("gauss_sxy", "gauss_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not value > 0:
                raise DHRError(f"crf.{key}={value!r}: use a positive number")
        if not isinstance(self.clip, (int, float)) or not 0 < self.clip < 1:
            raise DHRError(f"crf.clip={self.clip!r}: use a probability floor in (0, 1)")
        if self.denorm not in DENORM_MODES:
            raise DHRError(f"crf.denorm={self.denorm!r}: use truncate (the release) or round")
        processes = None if self.processes in (None, "auto") else self.processes
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise DHRError(f"crf.processes={self.processes!r}: use auto or a whole number >= 1")
        object.__setattr__(self, "processes", processes)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> CRFParams:
        return from_mapping(cls, cfg, "crf")

    @classmethod
    def defaults(cls, **overrides: Any) -> CRFParams:
        """``conf/crf/default.yaml`` with ``overrides``: for code that runs outside Hydra."""
        return cls.from_cfg(merge(conf_node("crf/default.yaml"), overrides))


def denormalize(image_chw: np.ndarray, mode: str) -> np.ndarray:
    """ImageNet-normalised (3, H, W) → contiguous uint8 (H, W, 3), the release's arithmetic.

    The release multiplies the float32 array by Python-list std and mean, so numpy computes
    (x * std + mean) * 255 in float64; ``truncate`` then drops the fraction (values outside
    [0, 255] are clipped first, which the release's uint8 cast leaves undefined). float32
    arithmetic moves 114, 64 and 25 of the 256 R, G, B levels by one (``dhr-method.md`` §5.1).
    """
    if mode not in DENORM_MODES:
        raise DHRError(f"crf.denorm={mode!r}: use truncate (the release) or round")
    x = np.asarray(image_chw, dtype=np.float32).transpose(1, 2, 0).astype(np.float64)
    x = (x * np.asarray(IMAGENET_STD, np.float64) + np.asarray(IMAGENET_MEAN, np.float64)) * 255.0
    x = np.clip(x, 0, 255)
    x = np.round(x) if mode == "round" else np.floor(x)
    return np.ascontiguousarray(x.astype(np.uint8))


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
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


def _crf_job(args: tuple[np.ndarray, np.ndarray, CRFParams]) -> np.ndarray:
    return dense_crf(*args)  # looked up at call time: a spy on dense_crf sees serial calls


class CRFPool:
    """Dense CRFs of many images with one parameter set, in worker processes (created on first use).

    ``params.processes`` 1 runs serially; a single image also runs serially, where a pool costs
    more than it saves. The pool persists between calls (DHR runs CRFs every training step);
    :meth:`close` ends it, and a module holding a pool still pickles (``ddp_spawn``).
    """

    def __init__(self, params: CRFParams) -> None:
        self.params = params
        self._pool = None
        self._size = 0

    def __call__(self, images: Sequence[np.ndarray], probs: Sequence[np.ndarray],
                 progress: str | None = None) -> list[np.ndarray]:
        """Q for uint8 (H, W, 3) images and (C, H, W) probabilities; ``progress`` names a progress display."""
        jobs = [(im, p, self.params) for im, p in zip(images, probs, strict=True)]
        size = worker_count(self.params.processes, len(jobs))
        if size == 1:
            results = map(_crf_job, jobs)
        else:
            if self._pool is None or self._size < size:
                self.close()
                self._pool, self._size = fork_pool(size), size
            results = self._pool.imap(_crf_job, jobs)
        if progress:
            from dhr.utils.progress import track

            results = track(results, len(jobs), progress)
        return list(results)

    def on_normalised(self, images_chw: Sequence[np.ndarray], probs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Q for ImageNet-normalised (3, H, W) images, de-normalised with ``params.denorm``."""
        return self([denormalize(im, self.params.denorm) for im in images_chw], probs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool, self._size = None, 0

    def __enter__(self) -> CRFPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None, "_size": 0}


class PassThroughCRF(CRFPool):
    """A stand-in whose Q is the input maps (the winner is their argmax): for diagnostics with
    ``crf=off`` and for benchmarks that time the relabelling without the CRF."""

    def __call__(self, images: Sequence[np.ndarray], probs: Sequence[np.ndarray],
                 progress: str | None = None) -> list[np.ndarray]:
        return [np.asarray(p, dtype=np.float32) for p in probs]


def dense_crf_many(images: Sequence[np.ndarray], probs: Sequence[np.ndarray], params: CRFParams,
                   progress: str | None = None) -> list[np.ndarray]:
    """``dense_crf`` over many images in a pool that lives for this call only."""
    with CRFPool(params) as pool:
        return pool(images, probs, progress)


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


def crf_refine_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, params: CRFParams,
                      gt_prob: float = 0.7, ignore_index: int = 255) -> np.ndarray:
    """Dense CRF on a hard label map (e.g. seed masks): refined (H, W) uint8 labels."""
    q = dense_crf(image, labels_to_probs(labels, n_labels, gt_prob, ignore_index), params)
    return q.argmax(0).astype(np.uint8)
