"""Multi-scale + flip inference (``dhr-method.md`` §9 item 2), batched over the flip."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


@torch.no_grad()
def multiscale_probs(
    net: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    flip: bool = True,
) -> torch.Tensor:
    """Averaged softmax maps (N, C, H, W) at the input size.

    Per scale s: resize the image to int(H s) x int(W s), softmax, resize to the scale-1 logit
    size, un-flip; average over scales and flips; resize to H x W. All resizes are bilinear with
    align_corners=True and skipped when the size is unchanged.
    """
    n, _, h, w = image.shape
    base: tuple[int, int] | None = None
    total: torch.Tensor | None = None
    count = 0
    for s in sorted(scales, key=lambda v: v != 1.0):  # scale 1.0 first: it fixes the logit size
        size = (int(h * s), int(w * s))
        x = _resize(image, size)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        probs = torch.softmax(net(x).float(), dim=1)
        if base is None:
            base = tuple(probs.shape[-2:]) if s == 1.0 else (math.ceil(h / 4), math.ceil(w / 4))
        probs = _resize(probs, base)
        if flip:
            probs = probs[:n] + probs[n:].flip(-1)
            count += 2
        else:
            count += 1
        total = probs if total is None else total + probs
    assert total is not None, "at least one scale is needed"
    return _resize(total / count, (h, w))
