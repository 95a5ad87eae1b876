"""DINO's projection head: an MLP to a bottleneck, L2 normalisation, then a weight-normalised linear
layer to K prototypes (Caron et al. 2021, §3.1). With ``norm_last_layer`` the last layer's norm is
fixed at 1, which the paper found to stabilise training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int, bottleneck_dim: int, layers: int = 3,
                 norm_last_layer: bool = True) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(layers, 1) - 1) + [bottleneck_dim]
        blocks: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            blocks.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                blocks.append(nn.GELU())
        self.mlp = nn.Sequential(*blocks)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
