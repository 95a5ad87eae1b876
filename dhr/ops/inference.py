"""Multi-scale + flip inference, one implementation for segmentation, CAMs and USS features.

``dhr-method.md`` §9 item 2 (segmentation), the CAM seeds of the built-in baseline and the CAUSE
feature export (``cause-method.md`` §10) all do the same thing with different conventions: per
scale, resize the image, run the image and its mirror as one batch, resize the output to a
common size, un-mirror and add. :func:`multiscale_flip` does that; the callers choose the sizes
and the corner convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from dhr.ops.argmax import argmax

SizeFn = Callable[[int, int, float], tuple[int, int]]


def scaled_size(h: int, w: int, s: float) -> tuple[int, int]:
    """int(H s) x int(W s), the release's rule."""
    return int(h * s), int(w * s)


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """Bilinear resize; a no-op at the same size (bilinear is the identity there either way)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


@torch.no_grad()
def multiscale_flip(fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scales: Sequence[float], *,
                    flip: bool, align_corners: bool, input_size: SizeFn = scaled_size,
                    out_size: Sequence[int] | None = None) -> tuple[torch.Tensor, int]:
    """Sum over scales and flips of ``fn(resized image)`` (fp32) at ``out_size``, and the number of terms.

    ``out_size`` None: the size of the first scale's output. Every resize uses ``align_corners``.
    """
    if not scales:
        raise ValueError("multi-scale inference needs at least one scale")
    n, _, h, w = image.shape
    total: torch.Tensor | None = None
    count = 0
    for s in scales:
        x = resize(image, input_size(h, w, s), align_corners)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        y = fn(x).float()
        if out_size is None:
            out_size = tuple(y.shape[-2:])
        y = resize(y, out_size, align_corners)
        if flip:
            y = y[:n] + y[n:].flip(-1)
        count += 2 if flip else 1
        total = y if total is None else total + y
    assert total is not None
    return total, count


def multiscale_probs(net: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                     scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0), flip: bool = True,
                     softmax: bool = True) -> torch.Tensor:
    """Averaged softmax maps (N, C, H, W) at the input size (§9 item 2).

    Per scale: softmax of the logits, resized to the scale-1 logit size (stride 4 when 1.0 is not
    among the scales), un-flipped; averaged; resized to H x W. Bilinear, align_corners=True.
    ``softmax=False``: ``net`` already gives class scores (Mask2Former's semantic inference).
    """
    h, w = image.shape[-2:]
    ordered = sorted(scales, key=lambda v: v != 1.0)  # scale 1.0 first: it fixes the logit size
    base = None if 1.0 in scales else (math.ceil(h / 4), math.ceil(w / 4))
    def scores(x: torch.Tensor) -> torch.Tensor:
        y = net(x).float()
        return torch.softmax(y, dim=1) if softmax else y

    total, count = multiscale_flip(scores, image, ordered, flip=flip, align_corners=True, out_size=base)
    return resize(total / count, (h, w), True)


def labels_per_size(scores: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, sizes: torch.Tensor,
                    fill: int) -> torch.Tensor:
    """(N, H, W) argmax labels of a padded batch, each image run at its own size (``sizes``: (N, 2) h, w).

    Images of one size run together. Run on the padded batch, the padding would reach the network's
    global pooling and attention, and a score would depend on which images share a batch
    (``val_batch_size``, the DDP shards). ``scores(x)`` gives class scores at the size of ``x``;
    padding is labelled ``fill``.
    """
    labels = torch.full((image.shape[0], *image.shape[-2:]), fill, dtype=torch.long, device=image.device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes.tolist()):
        groups.setdefault((h, w), []).append(i)
    for (h, w), members in groups.items():
        index = torch.tensor(members, device=image.device)
        labels[index, :h, :w] = argmax(scores(image[index, :, :h, :w]), 1)
    return labels
