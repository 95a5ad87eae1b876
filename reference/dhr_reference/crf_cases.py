"""Dense-CRF agreement cases: real photographs cut to random crops, with random CAM-like unaries.

The torch CRF backend is checked against pydensecrf on these (``tests/test_crf_agreement.py``,
``scripts/bench/crf.py``). A unary is smooth class evidence on a coarse grid (as a CAM at stride
16 is) plus per-pixel noise, at a random sharpness, so the CRF has real decisions to make along
object edges and in ambiguous regions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def random_unaries(rng: np.random.Generator, k: int, h: int, w: int, cell: int = 16) -> np.ndarray:
    """(k, h, w) float32 class probabilities: coarse logits upsampled bilinearly, plus pixel noise, softmax."""
    coarse = rng.normal(0, rng.uniform(1, 3), (1, k, h // cell + 2, w // cell + 2)).astype(np.float32)
    logits = F.interpolate(torch.from_numpy(coarse), size=(h, w), mode="bilinear", align_corners=False)[0]
    logits = logits + torch.from_numpy(rng.normal(0, rng.uniform(0, 1), (k, h, w)).astype(np.float32))
    return torch.softmax(logits, dim=0).numpy()


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A contiguous uint8 crop of at most ``size`` x ``size`` at a random place."""
    h, w = image.shape[:2]
    ch, cw = min(size, h), min(size, w)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw])


def agreement_cases(paths: Sequence[Path], per_image: int, seed: int = 0, k_range: tuple[int, int] = (2, 21),
                    sizes: Sequence[int] = (128, 256, 384, 512)) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, uint8 (h, w, 3) crop, (K, h, w) probabilities), ``per_image`` cases per photograph."""
    rng = np.random.default_rng(seed)
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        for _ in range(per_image):
            crop = random_crop(image, int(rng.choice(sizes)), rng)
            k = int(rng.integers(k_range[0], k_range[1] + 1))
            yield f"{Path(path).name} {crop.shape[0]}x{crop.shape[1]} K={k}", crop, random_unaries(rng, k, *crop.shape[:2])


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels whose (C, H, W) posteriors pick the same label."""
    return float((a.argmax(0) == b.argmax(0)).mean())
