"""The optimisers: the release's SGD + poly (``dhr-method.md`` §8) and Mask2Former's AdamW recipe.

SGD: two parameter groups (backbone at ``lr``, heads at ``lr * head_lr_mult``), momentum, weight
decay. AdamW (the official Mask2Former ``build_optimizer``): backbone at ``lr * backbone_lr_mult``,
no decay on normalisation layers, embeddings and Swin's position tables, the whole model's
gradient norm clipped. Both decay the LR per step by (1 - t / T)^power over the trainer's
estimated steps. The values come from the model's ``optim`` node only (``conf/model/*.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dhr.errors import DHRError
from dhr.utils.config import from_mapping


@dataclass(frozen=True)
class OptimConfig:
    """``model.optim``."""

    lr: float
    head_lr_mult: float
    momentum: float
    weight_decay: float
    poly_power: float

    def __post_init__(self) -> None:
        for key in ("lr", "head_lr_mult"):
            if not isinstance(getattr(self, key), (int, float)) or not getattr(self, key) > 0:
                raise DHRError(f"model.optim.{key}={getattr(self, key)!r}: use a positive number")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0 or self.poly_power < 0:
            raise DHRError("model.optim: momentum in [0, 1), weight_decay >= 0 and poly_power >= 0 are required")

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> OptimConfig:
        return from_mapping(cls, cfg, "model.optim")


def poly_sgd(backbone: Iterable[torch.nn.Parameter], heads: Iterable[torch.nn.Parameter], optim: OptimConfig,
             total_steps: int) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: SGD over the two groups and the per-step poly schedule."""
    groups = [{"params": [p for p in backbone if p.requires_grad], "lr": optim.lr},
              {"params": [p for p in heads if p.requires_grad], "lr": optim.lr * optim.head_lr_mult}]
    optimizer = torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                                nesterov=False)
    return with_poly_schedule(optimizer, total_steps, optim.poly_power)


def with_poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int, power: float) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: ``optimizer`` and a per-step (1 - t / T)^power LR factor."""
    total = max(1, int(total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1.0 - t / total) ** power)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@dataclass(frozen=True)
class AdamWConfig:
    """``model.optim`` of Mask2Former (the official recipe's names in lower case)."""

    lr: float
    backbone_lr_mult: float
    weight_decay: float
    weight_decay_norm: float
    weight_decay_embed: float
    poly_power: float
    clip_grad_norm: float | None  # the whole model's L2 gradient norm; null: no clipping

    def __post_init__(self) -> None:
        if not self.lr > 0 or not self.backbone_lr_mult > 0:
            raise DHRError("model.optim: lr and backbone_lr_mult must be positive")
        if min(self.weight_decay, self.weight_decay_norm, self.weight_decay_embed, self.poly_power) < 0:
            raise DHRError("model.optim: weight decays and poly_power must be >= 0")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise DHRError(f"model.optim.clip_grad_norm={self.clip_grad_norm}: use a positive norm or null")

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> AdamWConfig:
        return from_mapping(cls, cfg, "model.optim")


NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
              nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")  # Swin's position tables


def adamw_param_groups(model: nn.Module, backbone: nn.Module, optim: AdamWConfig) -> list[dict[str, Any]]:
    """Parameter groups by (LR, weight decay), each parameter's pair as the official ``build_optimizer`` sets it.

    The official code makes one group per parameter; merging equal settings is the same update
    and keeps the LR monitor to a few curves.
    """
    in_backbone = {id(p) for p in backbone.parameters()}
    seen: set[int] = set()
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr = optim.lr * (optim.backbone_lr_mult if id(param) in in_backbone else 1.0)
            decay = optim.weight_decay
            if any(key in name for key in NO_DECAY_NAMES):
                decay = 0.0
            if isinstance(module, NORM_TYPES):
                decay = optim.weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = optim.weight_decay_embed
            groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def poly_adamw(model: nn.Module, backbone: nn.Module, optim: AdamWConfig, total_steps: int) -> dict[str, Any]:
    """AdamW over :func:`adamw_param_groups` with the per-step poly schedule."""
    optimizer = torch.optim.AdamW(adamw_param_groups(model, backbone, optim), lr=optim.lr,
                                  weight_decay=optim.weight_decay)
    return with_poly_schedule(optimizer, total_steps, optim.poly_power)
