"""CAUSE segment heads (``cause-method.md`` §6.1): MLP and TR (one DETR-style decoder layer).

Parameter names follow the release (``tr.self_attn``, ``tr.f2.0`` ...) so that official DHR
head checkpoints load strictly. The concept codebook is a non-persistent buffer: it is never
part of the state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPProjector(nn.Module):
    """out = f1(drop(x)) + f2(drop(x)), dropouts sampled independently per branch."""

    def __init__(self, dim: int, reduced_dim: int = 90, dropout: float = 0.1) -> None:
        super().__init__()
        self.f1 = nn.Conv2d(dim, reduced_dim, 1)
        self.f2 = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, reduced_dim, 1))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f1(self.dropout(x)) + self.f2(self.dropout(x))


class SegmentMLP(nn.Module):
    def __init__(self, *, dim: int, reduced_dim: int = 90, dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp = MLPProjector(dim, reduced_dim, dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens)


class TRLayer(nn.Module):
    """Post-norm decoder layer (1 head) whose output is added back onto the backbone tokens, then the MLP."""

    def __init__(self, dim: int, reduced_dim: int, ffn_dim: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, 1, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(dim, 1, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.f1 = nn.Conv2d(dim, reduced_dim, 1)
        self.f2 = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, reduced_dim, 1))

    def decode(self, query: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = query + pos
        x = self.norm1(query + self.drop(self.self_attn(q, k, query, need_weights=False)[0]))
        x = self.norm2(x + self.drop(self.multihead_attn(x + pos, memory, memory, need_weights=False)[0]))
        x = self.norm3(x + self.drop(self.linear2(self.drop(F.relu(self.linear1(x))))))
        return x


class SegmentTR(nn.Module):
    """Queries = nearest codebook concept of each patch (+ learnable positions); memory = the tokens."""

    def __init__(self, *, dim: int, num_queries: int, reduced_dim: int = 90, ffn_dim: int = 2048,
                 dropout: float = 0.1, num_concepts: int = 2048) -> None:
        super().__init__()
        self.query_pos = nn.Parameter(torch.randn(num_queries, dim))
        self.tr = TRLayer(dim, reduced_dim, ffn_dim, dropout)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("codebook", torch.zeros(num_concepts, dim), persistent=False)

    def positions(self, n: int) -> torch.Tensor:
        """``query_pos`` resampled to n tokens by 1-D linear interpolation over the flat index."""
        pos = self.query_pos
        if pos.shape[0] == n:
            return pos
        return F.interpolate(pos.t().unsqueeze(0), size=n, mode="linear", align_corners=False)[0].t()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, d, h, w = tokens.shape
        seq = tokens.flatten(2).transpose(1, 2)  # (B, P, D)
        sim = F.normalize(seq, dim=-1) @ F.normalize(self.codebook, dim=-1).t()
        query = self.codebook[sim.argmax(-1)]  # vq(T)
        y = seq + self.tr.decode(query, seq, self.positions(h * w).unsqueeze(0))
        y = self.drop(y.transpose(1, 2).reshape(b, d, h, w))
        return self.tr.f1(self.drop(y)) + self.tr.f2(self.drop(y))
