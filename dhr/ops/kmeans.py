"""Spherical k-means in torch: the unsupervised baseline CAUSE is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, *, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """Centroids (k, D) of L2-normalised rows of ``x`` (N, D), k-means++ initialisation."""
    x = F.normalize(x.float(), dim=1)
    g = torch.Generator(device="cpu").manual_seed(seed)
    first = int(torch.randint(len(x), (1,), generator=g))
    centroids = [x[first]]
    for _ in range(1, k):
        sim = torch.stack(centroids) @ x.t()
        dist = (1 - sim.max(0).values).clamp_min(0)
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1 / len(dist))
        centroids.append(x[int(torch.multinomial(probs.cpu(), 1, generator=g))])
    c = torch.stack(centroids)
    for _ in range(iters):
        assign = (x @ c.t()).argmax(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        empty = new.norm(dim=1) == 0
        new[empty] = c[empty]
        c = F.normalize(new, dim=1)
    return c
