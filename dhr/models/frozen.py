"""Frozen USS backbones for CAUSE: a ViT's patch tokens, or one map of a pretrained CNN.

Both give (B, D, h, w) with ``embed_dim`` D and ``patch_size`` (the map's stride), which is all
CAUSE and the feature export read. A CNN here is a project choice, measured in
``docs/cause.md``: on the synthetic sets the ImageNet EfficientNet-Lite0 maps merge the colour
families, where the tiny random ViT keeps them apart, so the defaults keep the ViT.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dhr.errors import DHRError
from dhr.models.backbones import backbone_from_cfg
from dhr.models.vit import FrozenViT, vit_from_cfg


class FrozenCNN(nn.Module):
    """One ``features_only`` level of a timm CNN, in eval mode without gradients."""

    def __init__(self, net: nn.Module, *, level: int, stride: int) -> None:
        super().__init__()
        self.net = net
        self.level = level
        self.net.eval()
        self.net.requires_grad_(False)
        self.patch_size = stride
        self.embed_dim = int(net.feature_info.channels()[level])

    def train(self, mode: bool = True) -> FrozenCNN:
        super().train(mode)
        self.net.eval()  # always frozen: BatchNorm keeps its ImageNet statistics
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[self.level]


def frozen_from_cfg(cfg: dict[str, Any]) -> FrozenViT | FrozenCNN:
    """The frozen backbone of a ``conf/backbone/*.yaml`` node: a CNN when it has ``output_stride``.

    For a CNN, ``uss_level`` picks the map (an index into its ``out_indices``); the map's stride
    is the output stride or its own, whichever is smaller.
    """
    cfg = dict(cfg)
    if "output_stride" not in cfg:
        return vit_from_cfg(cfg)
    level = cfg.pop("uss_level", None)
    if level is None:
        raise DHRError(f"backbone {cfg.get('name')}: a CNN USS backbone needs backbone.uss_level (which map to use)")
    with torch.random.fork_rng(devices=[]):  # an unweighted CNN is the same in training, export and resume
        torch.manual_seed(int(cfg.pop("init_seed", 0)))
        net, output_stride = backbone_from_cfg(cfg)
    reductions = net.feature_info.reduction()
    if not 0 <= int(level) < len(reductions):
        raise DHRError(f"backbone.uss_level={level}: use 0..{len(reductions) - 1} (maps at strides {reductions})")
    return FrozenCNN(net, level=int(level), stride=min(int(reductions[int(level)]), output_stride))
