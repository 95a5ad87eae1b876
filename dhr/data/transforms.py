"""Joint transforms: image, label maps and (later) feature maps move together.

A sample is a dict with ``image`` (PIL RGB, later a float32 HWC array), ``masks`` (name → PIL
label image, later uint8 arrays) and ``geometry`` (a :class:`Geometry` recording every
geometric step, so feature maps stored for the original image can be resampled onto the crop).
Randomness comes from :mod:`random`, which Lightning seeds per worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD, normalize_rgb

Sample = dict[str, Any]


@dataclass
class Geometry:
    """Where the crop came from: original size → resized size → (flip) → crop/paste boxes.

    ``src_box`` is the window (y0, x0, y1, x1) of the resized, flipped image that was kept and
    ``crop_box`` the place (y0, x0, y1, x1) it was pasted on the output canvas.
    """

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int] = (0, 0)
    flipped: bool = False
    src_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    crop_box: tuple[int, int, int, int] = (0, 0, 0, 0)
    canvas_hw: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        h, w = self.orig_hw
        if self.resized_hw == (0, 0):
            self.resized_hw = (h, w)
        if self.src_box == (0, 0, 0, 0):
            self.src_box = (0, 0, h, w)
            self.crop_box = (0, 0, h, w)
            self.canvas_hw = (h, w)

    def as_dict(self) -> dict[str, list[int] | bool]:
        return {"orig_hw": list(self.orig_hw), "resized_hw": list(self.resized_hw), "flipped": self.flipped,
                "src_box": list(self.src_box), "crop_box": list(self.crop_box), "canvas_hw": list(self.canvas_hw)}


@dataclass
class Compose:
    transforms: Sequence[Callable[[Sample], Sample]] = field(default_factory=list)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample


@dataclass
class RandomResizeLong:
    """Longer side L ~ U{min_long..max_long}; short side ``int(round(short * L / long))``.

    Image bicubic, masks nearest (PIL); skipped when the size does not change.
    """

    min_long: int
    max_long: int

    def __call__(self, sample: Sample) -> Sample:
        image: Image.Image = sample["image"]
        w, h = image.size
        target = random.randint(self.min_long, self.max_long)
        if h >= w:
            size = (int(round(w * target / h)), target)
        else:
            size = (target, int(round(h * target / w)))
        if size != (w, h):
            sample["image"] = image.resize(size, Image.BICUBIC)
            sample["masks"] = {k: m.resize(size, Image.NEAREST) for k, m in sample["masks"].items()}
        geo: Geometry = sample["geometry"]
        geo.resized_hw = (size[1], size[0])
        return sample


@dataclass
class RandomHFlip:
    p: float = 0.5

    def __call__(self, sample: Sample) -> Sample:
        if random.random() < self.p:
            sample["image"] = sample["image"].transpose(Image.FLIP_LEFT_RIGHT)
            sample["masks"] = {k: m.transpose(Image.FLIP_LEFT_RIGHT) for k, m in sample["masks"].items()}
            sample["geometry"].flipped = True
        return sample


@dataclass
class ColorJitter:
    """torchvision's colour jitter on the image only."""

    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.1

    def __post_init__(self) -> None:
        from torchvision.transforms import ColorJitter as _CJ

        self._jitter = _CJ(self.brightness, self.contrast, self.saturation, self.hue)

    def __call__(self, sample: Sample) -> Sample:
        sample["image"] = self._jitter(sample["image"])
        return sample


@dataclass
class Normalize:
    """PIL → float32 HWC normalised array; masks → uint8 arrays."""

    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __call__(self, sample: Sample) -> Sample:
        image = normalize_rgb(sample["image"], self.mean, self.std)
        sample["image"] = image
        sample["masks"] = {k: np.asarray(m, dtype=np.uint8) for k, m in sample["masks"].items()}
        h, w = image.shape[:2]
        geo: Geometry = sample["geometry"]
        geo.src_box = (0, 0, h, w)
        geo.crop_box = (0, 0, h, w)
        geo.canvas_hw = (h, w)
        return sample


def _axis_window(length: int, size: int) -> tuple[int, int, int]:
    """(source start, destination start, extent) along one axis of a random crop/paste."""
    if length >= size:
        return random.randrange(length - size + 1), 0, size
    return 0, random.randrange(size - length + 1), length


@dataclass
class RandomCropPad:
    """Crop ``size`` x ``size``: a random window of a longer axis, a random paste of a shorter one.

    Padding is 0 for the (normalised) image and ``ignore_index`` for masks. The paste box on
    the canvas is the crop box.
    """

    size: int
    ignore_index: int = 255

    def __call__(self, sample: Sample) -> Sample:
        image: np.ndarray = sample["image"]
        h, w = image.shape[:2]
        sy, dy, eh = _axis_window(h, self.size)
        sx, dx, ew = _axis_window(w, self.size)
        canvas = np.zeros((self.size, self.size, image.shape[2]), dtype=image.dtype)
        canvas[dy : dy + eh, dx : dx + ew] = image[sy : sy + eh, sx : sx + ew]
        sample["image"] = canvas
        masks = {}
        for k, m in sample["masks"].items():
            out = np.full((self.size, self.size), self.ignore_index, dtype=np.uint8)
            out[dy : dy + eh, dx : dx + ew] = m[sy : sy + eh, sx : sx + ew]
            masks[k] = out
        sample["masks"] = masks
        geo: Geometry = sample["geometry"]
        geo.src_box = (sy, sx, sy + eh, sx + ew)
        geo.crop_box = (dy, dx, dy + eh, dx + ew)
        geo.canvas_hw = (self.size, self.size)
        return sample


def train_transform(*, crop_size: int, resize_long: Sequence[int], flip: float = 0.5,
                    jitter: Sequence[float] | None = (0.3, 0.3, 0.3, 0.1), ignore_index: int = 255) -> Compose:
    """The training augmentation of ``dhr-method.md`` §8, in its order."""
    steps: list[Callable[[Sample], Sample]] = [RandomResizeLong(int(resize_long[0]), int(resize_long[1])), RandomHFlip(flip)]
    if jitter:
        steps.append(ColorJitter(*jitter))
    steps += [Normalize(), RandomCropPad(crop_size, ignore_index)]
    return Compose(steps)


def eval_transform() -> Compose:
    """Normalise only."""
    return Compose([Normalize()])
