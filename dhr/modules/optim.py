"""The SGD + poly schedule of the release (``dhr-method.md`` §8), for every module that uses it.

Two parameter groups (backbone at ``lr``, heads at ``lr * head_lr_mult``), momentum, weight
decay, and a per-step poly decay (1 - t / T)^power over the trainer's estimated steps. The
values come from the model's ``optim`` node only (``conf/model/*.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

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
    total = max(1, int(total_steps))
    power = optim.poly_power
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1.0 - t / total) ** power)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
