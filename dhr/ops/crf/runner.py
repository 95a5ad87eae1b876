"""One way into the dense CRF for every caller, whichever backend runs it.

:class:`CRFRunner` takes crops of any sizes and label counts. The torch backend groups them by
size, pads the label counts within a group (padding labels get Q = 0 and change nothing) and runs
each group in batches of ``crf.chunk`` (auto: 16 on an accelerator, 1 on the CPU) on the crops'
own device; the pydensecrf backend copies them to the CPU and runs them one by one in worker
processes. Either way Q comes back as float32 tensors on the device the probabilities came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dhr.ops.crf.image import denormalize
from dhr.ops.crf.mean_field import mean_field
from dhr.ops.crf.native import pydensecrf_job
from dhr.ops.crf.params import CRFParams
from dhr.utils.pool import fork_pool, worker_count


class CRFRunner:
    """Dense CRFs with one parameter set. The pydensecrf worker pool is created on first use and
    persists between calls (DHR runs CRFs every training step); :meth:`close` ends it, and a module
    holding a runner still pickles (``ddp_spawn``)."""

    reads_images = True  # callers de-normalise the images for it

    def __init__(self, params: CRFParams) -> None:
        self.params = params
        self._pool = None
        self._size = 0

    def __call__(self, images: Sequence[torch.Tensor], probs: Sequence[torch.Tensor],
                 progress: str | None = None) -> list[torch.Tensor]:
        """Q (C, H, W) for uint8 (H, W, 3) images and (C, H, W) probabilities; ``progress`` names a progress display."""
        if len(images) != len(probs):
            raise ValueError(f"{len(images)} CRF images but {len(probs)} probability maps")
        for image, p in zip(images, probs, strict=True):
            if tuple(image.shape) != (*p.shape[1:], 3):
                raise ValueError(f"CRF image is {tuple(image.shape)} but probabilities are {tuple(p.shape)}")
        if not probs:
            return []
        backend = self.params.backend_for(probs[0].device)
        results = self._torch(images, probs) if backend == "torch" else self._pydensecrf(images, probs)
        if progress:
            from dhr.utils.progress import track

            results = track(results, len(probs), progress)
        out: list[torch.Tensor | None] = [None] * len(probs)
        for i, q in results:
            out[i] = q
        return out  # type: ignore[return-value]

    def on_normalised(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Q (B, C, H, W) for ImageNet-normalised (B, 3, H, W) images, de-normalised with ``crf.denorm``."""
        rgb = denormalize(images.to(probs.device), self.params.denorm)
        return torch.stack(self(list(rgb), list(probs)))

    def _torch(self, images: Sequence[torch.Tensor], probs: Sequence[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(probs):
            by_size.setdefault(tuple(p.shape[1:]), []).append(i)
        size = self.params.chunk_for(probs[0].device)
        for members in by_size.values():
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                counts = [probs[i].shape[0] for i in chunk]
                width = max(counts)
                batch = torch.stack([F.pad(probs[i].float(), (0, 0, 0, 0, 0, width - k))
                                     for i, k in zip(chunk, counts, strict=True)])
                labels = None if min(counts) == width else torch.tensor(counts)
                rgb = torch.stack([images[i].to(batch.device) for i in chunk])
                q = mean_field(rgb, batch, self.params, labels)
                for j, (i, k) in enumerate(zip(chunk, counts, strict=True)):
                    yield i, q[j, :k]

    def _pydensecrf(self, images: Sequence[torch.Tensor], probs: Sequence[torch.Tensor]) -> Iterator[tuple[int, torch.Tensor]]:
        jobs = [(np.ascontiguousarray(im.cpu().numpy()), p.float().cpu().numpy(), self.params)
                for im, p in zip(images, probs, strict=True)]
        size = worker_count(self.params.processes, len(jobs))
        if size == 1:
            results = map(pydensecrf_job, jobs)
        else:
            if self._pool is None or self._size < size:
                self.close()
                self._pool, self._size = fork_pool(size), size
            results = self._pool.imap(pydensecrf_job, jobs)
        for i, (q, p) in enumerate(zip(results, probs, strict=True)):
            yield i, torch.from_numpy(q).to(p.device)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool, self._size = None, 0

    def __enter__(self) -> CRFRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None, "_size": 0}


class PassThroughCRF(CRFRunner):
    """A stand-in whose Q is the input maps (the winner is their argmax): for diagnostics with
    ``crf=off`` and for benchmarks that time the relabelling without the CRF. It reads no image, so
    callers need not de-normalise any (``images`` may hold Nones)."""

    reads_images = False

    def __call__(self, images: Sequence[torch.Tensor], probs: Sequence[torch.Tensor],
                 progress: str | None = None) -> list[torch.Tensor]:
        return [p.float() for p in probs]


def _with_backend(params: CRFParams, backend: str | None) -> CRFParams:
    return params if backend is None else dataclasses.replace(params, backend=backend)


def dense_crf(image: np.ndarray | torch.Tensor, probs: np.ndarray | torch.Tensor, params: CRFParams,
              backend: str | None = None) -> np.ndarray | torch.Tensor:
    """Q (C, H, W) float32 of one uint8 (H, W, 3) image and (C, H, W) probabilities; numpy in, numpy out.

    ``backend`` (torch | pydensecrf | auto) overrides ``params.backend``.
    """
    as_numpy = isinstance(probs, np.ndarray)
    image, probs = (torch.from_numpy(np.require(x, requirements=["C", "W"])) if isinstance(x, np.ndarray) else x
                    for x in (image, probs))
    q = CRFRunner(_with_backend(params, backend))([image], [probs])[0]
    return q.numpy() if as_numpy else q


def dense_crf_batch(images: torch.Tensor, probs: torch.Tensor, params: CRFParams,
                    backend: str | None = None) -> torch.Tensor:
    """Q (B, C, H, W) of (B, H, W, 3) uint8 images and (B, C, H, W) probabilities, on their device."""
    with CRFRunner(_with_backend(params, backend)) as runner:
        return torch.stack(runner(list(images), list(probs)))


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
