"""The ratios that decide whether DHR's mechanism can work on a dataset and recipe (issue 13).

    python scripts/geometry.py MASK_DIR --crop 512 --resize-long 320 640 --cam-stride 16 --uss-patch 14 \
        [--min-pixels 16] [--label NAME]

Reads the GT masks of one split (palette PNGs, 255 = ignore) and prints, in the pixels of the
training crops (images resized so that their long side is the mean of ``--resize-long``):

* object size (square root of a connected component's area, per class) in CAM cells
  (``--cam-stride`` px) and in USS working-grid cells (the grid of ``ceil_p(2S)/p`` cells over an
  S-pixel crop: ``S * p / ceil_p(2S)`` px, about p/2): the median over images of each image's
  largest object and of its smallest (images with two or more objects);
* crop side over the resized long side;
* tagged (present foreground) classes per image;
* small objects beside large ones: the share of images whose smallest object is under a third
  of the largest, and the median smallest/largest ratio over images with two or more objects.

GT is read for this description only; nothing here feeds training.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from dhr.utils.io import read_label_png


def image_objects(label: np.ndarray, background: int, min_pixels: int) -> list[tuple[int, float]]:
    """(class, sqrt area in px) of every connected component of every foreground class."""
    out = []
    for cls in np.unique(label):
        if cls in (background, 255):
            continue
        parts, count = ndimage.label(label == cls)
        sizes = np.bincount(parts.ravel())[1:]
        out.extend((int(cls), math.sqrt(s)) for s in sizes if s >= min_pixels)
    return out


def describe(mask_dir: Path, *, crop: int, resize_long: tuple[int, int], cam_stride: int, uss_patch: int,
             background: int = 0, min_pixels: int = 16) -> dict[str, float]:
    paths = sorted(mask_dir.glob("*.png"))
    if not paths:
        raise SystemExit(f"{mask_dir}: no PNG masks")
    target_long = sum(resize_long) / 2
    grid = math.ceil(2 * crop / uss_patch)
    uss_cell = crop / grid
    largest, smallest, crop_ratio, tags, small_share, small_ratio = [], [], [], [], [], []
    for path in paths:
        label = read_label_png(path)
        scale = target_long / max(label.shape)
        objects = [(c, s * scale) for c, s in image_objects(label, background, min_pixels)]
        crop_ratio.append(crop / target_long)
        tags.append(len({c for c, _ in objects}))
        if len(objects) >= 2:
            values = [s for _, s in objects]
            largest.append(max(values))
            smallest.append(min(values))
            small_ratio.append(min(values) / max(values))
            small_share.append(min(values) < max(values) / 3)
    big, small = float(np.median(largest)), float(np.median(smallest))
    return {
        "images": len(paths),
        "largest object / CAM cell": big / cam_stride,
        "smallest object / CAM cell": small / cam_stride,
        "largest object / USS cell": big / uss_cell,
        "smallest object / USS cell": small / uss_cell,
        "crop / resized long side": float(np.mean(crop_ratio)),
        "tagged classes per image": float(np.mean(tags)),
        "images with an object under 1/3 of the largest": float(np.mean(small_share)) if small_share else float("nan"),
        "smallest / largest object (median)": float(np.median(small_ratio)) if small_ratio else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mask_dir", type=Path)
    parser.add_argument("--crop", type=int, required=True)
    parser.add_argument("--resize-long", type=int, nargs=2, required=True)
    parser.add_argument("--cam-stride", type=int, default=16)
    parser.add_argument("--uss-patch", type=int, required=True)
    parser.add_argument("--background", type=int, default=0)
    parser.add_argument("--min-pixels", type=int, default=16, help="ignore components smaller than this (mask noise)")
    parser.add_argument("--label", default=None, help="column name (default: the mask folder)")
    args = parser.parse_args()
    stats = describe(args.mask_dir, crop=args.crop, resize_long=tuple(args.resize_long), cam_stride=args.cam_stride,
                     uss_patch=args.uss_patch, background=args.background, min_pixels=args.min_pixels)
    print(f"| {args.label or args.mask_dir} | value |\n|---|---|")
    for key, value in stats.items():
        print(f"| {key} | {value:.2f} |" if isinstance(value, float) else f"| {key} | {value} |")


if __name__ == "__main__":
    main()
