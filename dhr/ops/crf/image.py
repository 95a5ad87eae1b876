"""The CRF's image: ImageNet-normalised tensors back to the uint8 RGB the bilateral term reads."""

from __future__ import annotations

import numpy as np
import torch

from dhr.errors import DHRError
from dhr.ops.crf.params import DENORM_MODES
from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD


def denormalize(images: torch.Tensor | np.ndarray, mode: str) -> torch.Tensor | np.ndarray:
    """ImageNet-normalised (..., 3, H, W) → contiguous uint8 (..., H, W, 3), the release's arithmetic.

    The release multiplies the float32 array by Python-list std and mean, so numpy computes
    (x * std + mean) * 255 in float64; ``truncate`` then drops the fraction (values outside
    [0, 255] are clipped first, which the release's uint8 cast leaves undefined). float32
    arithmetic moves 114, 64 and 25 of the 256 R, G, B levels by one (``dhr-method.md`` §5.1).
    Runs on the tensor's device; a numpy array comes back as a numpy array.
    """
    if mode not in DENORM_MODES:
        raise DHRError(f"crf.denorm={mode!r}: use truncate (the release) or round")
    if isinstance(images, np.ndarray):
        return denormalize(torch.from_numpy(np.asarray(images, dtype=np.float32)), mode).numpy()
    x = images.float().movedim(-3, -1).double()
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64, device=x.device)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64, device=x.device)
    x = ((x * std + mean) * 255.0).clamp(0, 255)
    x = torch.round(x) if mode == "round" else torch.floor(x)
    return x.to(torch.uint8).contiguous()
