"""Dense SwAV: label-free pretraining of a ViT's patch tokens (``scripts/pretrain_vit.py``).

Two random crops of each image; the token of one view at an image location predicts the
Sinkhorn-balanced prototype code of the other view's feature at the same location. A local
stand-in for DINO weights on machines without them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def random_views(x: torch.Tensor, size: int, scale: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """A random square crop (``scale`` of each side, random position, random h-flip) resized to ``size``.

    Returns the views and their affine maps (B, 2, 3) from view coordinates to image
    coordinates, both in [-1, 1] (``affine_grid`` convention).
    """
    b = len(x)
    theta = torch.zeros(b, 2, 3, device=x.device)
    flip = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = (torch.rand(b, 2, device=x.device) * 2 - 1) * (1 - scale)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    views = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    gain = torch.empty(b, 1, 1, 1, device=x.device).uniform_(0.8, 1.2)
    shift = torch.empty(b, 1, 1, 1, device=x.device).uniform_(-0.2, 0.2)
    return views * gain + shift, theta


def correspondence(theta_a: torch.Tensor, theta_b: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each token centre of view A (g x g grid) lies in view B: (B, g*g, 2) coordinates and a validity mask."""
    u = (torch.arange(g, device=theta_a.device) + 0.5) / g * 2 - 1
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(1, -1, 3)
    image = pts @ theta_a.transpose(1, 2)  # (B, N, 2) image coordinates
    lin, shift = theta_b[:, :, :2], theta_b[:, :, 2]
    in_b = torch.linalg.solve(lin.unsqueeze(1), (image - shift.unsqueeze(1)).unsqueeze(-1)).squeeze(-1)
    return in_b, (in_b.abs() <= 1 - 1 / g).all(-1)


@torch.no_grad()
def balanced_assignment(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp: soft codes (N, K) whose prototypes share the batch equally.

    Not ``dhr.ops.sinkhorn``: that is DHR's transport (cost 1 - S, unit marginals, stopping
    test, min-max of the plan); SwAV runs a fixed 3 iterations towards equal prototype mass.
    """
    q = torch.exp((scores - scores.max()) / eps).t()
    q /= q.sum()
    k, n = q.shape
    for _ in range(iters):
        q /= q.sum(1, keepdim=True) * k
        q /= q.sum(0, keepdim=True) * n
    return (q * n).t()


class DenseSwAV(nn.Module):
    """Projection MLP + prototypes over the ViT's patch tokens; the loss of one pair of views."""

    def __init__(self, vit: nn.Module, dim: int, prototypes: int = 32, temperature: float = 0.1) -> None:
        super().__init__()
        self.vit = vit
        self.proj = nn.Sequential(nn.Linear(dim, 256), nn.GELU(), nn.Linear(256, 64))
        self.prototypes = nn.Linear(64, prototypes, bias=False)
        self.temperature = temperature

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
        p = self.vit.patch_embed.patch_size[0]
        return t.transpose(1, 2).reshape(len(x), -1, x.shape[-2] // p, x.shape[-1] // p)

    def loss(self, images: torch.Tensor, view: int) -> torch.Tensor:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        view_a, theta_a = random_views(images, view)
        view_b, theta_b = random_views(images, view)
        fa, fb = self.tokens(view_a), self.tokens(view_b)
        where, valid = correspondence(theta_a, theta_b, fa.shape[-1])
        fb_at = F.grid_sample(fb, where.unsqueeze(2), mode="bilinear", align_corners=False).squeeze(-1).transpose(1, 2)
        za = F.normalize(self.proj(fa.flatten(2).transpose(1, 2)[valid]), dim=-1)
        zb = F.normalize(self.proj(fb_at[valid]), dim=-1)
        pa, pb = self.prototypes(za), self.prototypes(zb)
        qa, qb = balanced_assignment(pa), balanced_assignment(pb)
        swapped = (qa * F.log_softmax(pb / self.temperature, 1)).sum(1) + (qb * F.log_softmax(pa / self.temperature, 1)).sum(1)
        return -0.5 * swapped.mean()
