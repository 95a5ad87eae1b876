"""Modularity of a soft concept assignment (CAUSE stage 1 and the cluster probe, ``cause-method.md`` §5).

The release materialises delta_ij = max_k tanh(C_ik C_jk / tau) as a B x K x P' x P' tensor.
tanh is increasing, so delta_ij = tanh(C_ik* C_jk* / tau) with k* = argmax_k C_ik C_jk: the
argmax is found without gradients in chunks of concepts, then one gather carries the gradient.
Same value and gradient, memory O(B P'^2 + chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_sample_indices(h: int, w: int, k: int, batch: int, device: torch.device | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """One random patch per non-overlapping k x k window (remainder dropped): (B, P') flat indices."""
    if k <= 1:
        return torch.arange(h * w, device=device).expand(batch, -1)
    gh, gw = h // k, w // k
    oy = torch.randint(0, k, (batch, gh, gw), device=device, generator=generator)
    ox = torch.randint(0, k, (batch, gh, gw), device=device, generator=generator)
    ys = torch.arange(gh, device=device).view(1, gh, 1) * k + oy
    xs = torch.arange(gw, device=device).view(1, 1, gw) * k + ox
    return (ys * w + xs).reshape(batch, -1)


@torch.no_grad()
def _argmax_concept(c: torch.Tensor, chunk: int) -> torch.Tensor:
    """k*_bij = argmax_k C_bik C_bjk, computed chunk by chunk over k: (B, P, P) long."""
    b, p, k = c.shape
    best = torch.full((b, p, p), -1.0, device=c.device, dtype=c.dtype)
    arg = torch.zeros((b, p, p), device=c.device, dtype=torch.long)
    for start in range(0, k, chunk):
        part = c[:, :, start : start + chunk]
        prod = part.permute(0, 2, 1).unsqueeze(-1) * part.permute(0, 2, 1).unsqueeze(-2)  # (B, kc, P, P)
        val, idx = prod.max(dim=1)
        better = val > best
        best = torch.where(better, val, best)
        arg = torch.where(better, idx + start, arg)
    return arg


def modularity_loss(x: torch.Tensor, codebook: torch.Tensor, *, tau: float = 0.1, chunk: int = 256) -> torch.Tensor:
    """-mean_b Q_b for tokens x (B, P, D) and concepts (K, D); images with e = 0 are left out.

    A = relu(cos) without the diagonal, W = A - d d^T / e, C = relu(cos(x, M)),
    delta = max_k tanh(C_ik C_jk / tau), Q = sum(W * delta) / e.
    """
    x = F.normalize(x.float(), dim=-1)
    m = F.normalize(codebook.float(), dim=-1)
    p = x.shape[1]
    a = (x @ x.transpose(1, 2)).clamp_min(0) * (1 - torch.eye(p, device=x.device, dtype=x.dtype))
    d = a.sum(-1)
    e = d.sum(-1)
    ok = e > 0
    if not ok.any():
        return codebook.sum() * 0.0  # no usable image: a zero loss that keeps the graph
    a, d, e, x = a[ok], d[ok], e[ok], x[ok]
    w = a - d.unsqueeze(-1) * d.unsqueeze(-2) / e.view(-1, 1, 1)
    c = (x @ m.t()).clamp_min(0)  # (B, P, K)
    k_star = _argmax_concept(c.detach(), chunk)
    ci = torch.gather(c, 2, k_star)  # C_{i, k*_ij}
    cj = torch.gather(c, 2, k_star.transpose(1, 2)).transpose(1, 2)  # C_{j, k*_ij}
    delta = torch.tanh(ci * cj / tau)
    q = (w * delta).sum((1, 2)) / e
    return -q.mean()
