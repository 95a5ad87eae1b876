"""CAUSE's modularity loss as the release writes it: the full B x K x P x P tensor (``cause-method.md``).

What :func:`dhr.ops.modularity.modularity_loss` (which never builds that tensor) is checked and timed against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modularity_loss_reference(x: torch.Tensor, codebook: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """The release's formula with the full B x K x P x P tensor."""
    x = F.normalize(x.float(), dim=-1)
    m = F.normalize(codebook.float(), dim=-1)
    p = x.shape[1]
    a = (x @ x.transpose(1, 2)).clamp_min(0) * (1 - torch.eye(p, device=x.device))
    d = a.sum(-1)
    e = d.sum(-1)
    w = a - d.unsqueeze(-1) * d.unsqueeze(-2) / e.view(-1, 1, 1)
    c = (x @ m.t()).clamp_min(0)
    delta = torch.tanh(torch.einsum("bik,bjk->bkij", c, c) / tau).max(dim=1).values
    return -((w * delta).sum((1, 2)) / e).mean()
