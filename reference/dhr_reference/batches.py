"""Random relabelling batches shaped like DHR's training crops, for tests, parity checks and benchmarks.

Each sample has K tagged classes drawn from ``k_range`` laid out as blocks; two of them are made
near-identical in USS space, so their prototype correlation exceeds any tau below ~0.95 and Step 3
runs; the last tagged class is erased from the seed mask, so Step 1 has a seed to restore. Crops
sit at random offsets in the canvas with padding outside (mask 255, image 0), as the release's
random crop leaves them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE = 255


def blank_outside_boxes(masks: torch.Tensor, images: torch.Tensor, boxes: torch.Tensor) -> None:
    """Make batches look padded: mask 255 and image 0 outside each crop box (in place)."""
    s = masks.shape[-1]
    for i, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        outside = torch.ones(s, s, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        masks[i][outside] = IGNORE
        images[i][:, outside] = 0


def random_relabel_batch(seed: int, *, batch: int = 3, canvas: int = 64, num_classes: int = 5,
                         k_range: tuple[int, int] = (2, 4), patch: int = 8, uss_dim: int = 6,
                         wss_dims: Sequence[int] = (7, 9), full_boxes: bool = False) -> dict:
    """Keyword arguments of :func:`dhr.ops.relabel.relabel` (minus ``cfg`` and ``crf``) for one batch."""
    from dhr.utils.grid import working_grid

    g = torch.Generator().manual_seed(seed)
    s = canvas
    truth = torch.zeros(batch, s, s, dtype=torch.long)
    tags = torch.zeros(batch, num_classes - 1)
    boxes, twins, erased = [], [], []
    for i in range(batch):
        if full_boxes:
            y0, x0, y1, x1 = 0, 0, s, s
        else:
            hh, ww = torch.randint(s // 2, s + 1, (2,), generator=g).tolist()
            y0, x0 = int(torch.randint(0, s - hh + 1, (1,), generator=g)), int(torch.randint(0, s - ww + 1, (1,), generator=g))
            y1, x1 = y0 + hh, x0 + ww
        boxes.append([y0, x0, y1, x1])
        k = int(torch.randint(k_range[0], k_range[1] + 1, (1,), generator=g))
        classes = (torch.randperm(num_classes - 1, generator=g)[:k] + 1).tolist()
        for cls in classes:  # blocks inside the crop, so every tagged class is in view
            bh, bw = (int(torch.randint(max(2, (y1 - y0) // 8), max(3, (y1 - y0) // 2), (1,), generator=g)),
                      int(torch.randint(max(2, (x1 - x0) // 8), max(3, (x1 - x0) // 2), (1,), generator=g)))
            y = int(torch.randint(y0, y1 - bh + 1, (1,), generator=g))
            x = int(torch.randint(x0, x1 - bw + 1, (1,), generator=g))
            truth[i, y : y + bh, x : x + bw] = cls
        present = [c for c in classes if int((truth[i] == c).sum()) >= 4 * patch * patch]  # a few grid cells at least
        for cls in classes:
            if bool((truth[i] == cls).any()):
                tags[i, cls - 1] = 1
        twins.append(present[:2])
        erased.append(present[-1] if len(present) > 2 else None)
    masks = truth.clone()
    noise = torch.rand(batch, s, s, generator=g)
    masks[noise < 0.1] = IGNORE
    masks[(noise > 0.1) & (noise < 0.15)] = 0
    for i, cls in enumerate(erased):
        if cls is not None:
            masks[i][truth[i] == cls] = 0  # the vanished minor seed Step 1 restores
    box_t = torch.tensor(boxes)
    images = torch.randn(batch, 3, s, s, generator=g) * 0.5 + truth[:, None].float() * 0.3
    blank_outside_boxes(masks, images, box_t)
    grid = working_grid(s, patch)
    base = torch.randn(batch, num_classes, uss_dim, generator=g)
    for i, pair in enumerate(twins):
        if len(pair) == 2:
            base[i, pair[1]] = base[i, pair[0]] + 0.05 * torch.randn(uss_dim, generator=g)
    small = F.interpolate(truth[:, None].float(), size=(grid, grid), mode="nearest")[:, 0].long()
    uss = torch.stack([base[i][small[i]] for i in range(batch)]).permute(0, 3, 1, 2)
    uss = uss + 0.3 * torch.randn(batch, uss_dim, grid, grid, generator=g)
    wss = [torch.randn(batch, d, s // 8, s // 8, generator=g) for d in wss_dims]
    cams = torch.randn(batch, num_classes - 1, s // 16, s // 16, generator=g) * 2
    return dict(masks=masks, cams=cams, tags=tags, images=images, boxes=box_t, uss=uss, wss_feats=wss,
                num_classes=num_classes, background_id=0)
