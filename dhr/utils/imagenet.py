"""ImageNet normalisation (the release's constants, as Python lists: see ``dhr.ops.crf.denormalize``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_rgb(image: Any, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """An RGB image (PIL or uint8 HWC) as the float32 HWC array the networks read: (x / 255 - mean) / std.

    float32 throughout, as the release's ``Normalize`` (its de-normalisation is the float64 one).
    """
    x = np.asarray(image, dtype=np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
