"""DINO self-supervised pre-training of a ViT on the training images (no label, tag or mask).

The USS stage of the paper runs CAUSE on a DINO-pretrained ViT. On the synthetic sets no such
network exists, so this module trains one the DINO way (``dhr.ops.dino``): a student ViT + head on
every crop, an EMA teacher on the global crops, centring and sharpening. The teacher's backbone
is what CAUSE then reads (``callbacks.backbone_export`` writes it in the DINO key layout that
``backbone.weights=PATH`` loads).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import torch
from torch import nn

from dhr.errors import DHRError
from dhr.models.dino_head import DINOHead
from dhr.models.pretrained import resolve_pretrained
from dhr.models.vit import FrozenViT
from dhr.modules.base import DHRLightningModule
from dhr.ops.dino import dino_loss, ema_update, teacher_momentum, updated_center


def trainable_vit(cfg: dict[str, Any]) -> nn.Module:
    """The timm ViT of a ``conf/backbone`` node (its weights loaded when it names any), with gradients."""
    cfg = resolve_pretrained(dict(cfg))
    vit = FrozenViT(cfg.pop("name"), **cfg).vit
    return vit.requires_grad_(True).train()


class DINOModule(DHRLightningModule):
    def __init__(
        self,
        *,
        backbone: dict[str, Any],
        global_crops: int,
        out_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        head_layers: int,
        norm_last_layer: bool,
        student_temp: float,
        teacher_temp: float,
        center_momentum: float,
        teacher_momentum: float,
        lr: float,
        min_lr: float,
        warmup_fraction: float,
        weight_decay: float,
        grad_clip: float | None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if global_crops < 1:
            raise DHRError(f"model.global_crops={global_crops}: the teacher needs at least one global crop")
        if teacher_temp <= 0 or student_temp <= 0:
            raise DHRError("model.teacher_temp and model.student_temp must be positive")
        vit = trainable_vit(backbone)
        head = DINOHead(int(vit.embed_dim), out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                        layers=head_layers, norm_last_layer=norm_last_layer)
        self.student = nn.ModuleDict({"backbone": vit, "head": head})
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def train(self, mode: bool = True) -> DINOModule:
        super().train(mode)
        self.teacher.eval()  # never trained by gradients; no dropout either way
        return self

    @staticmethod
    def _logits(net: nn.ModuleDict, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """One forward per crop size (the global crops together, the local ones together)."""
        out: list[torch.Tensor] = []
        for _, same_size in itertools.groupby(crops, key=lambda crop: crop.shape[-2:]):
            group = list(same_size)
            out += net["head"](net["backbone"](torch.cat(group))).chunk(len(group))
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        crops = list(batch["crops"])
        g = self.hparams.global_crops
        student = self._logits(self.student, crops)
        with torch.no_grad():
            teacher = self._logits(self.teacher, crops[:g])
        loss = dino_loss(student, teacher, self.center, student_temp=self.hparams.student_temp,
                         teacher_temp=self.hparams.teacher_temp)
        if not torch.isfinite(loss):
            raise DHRError(f"DINO loss is {loss.item()} at step {self.global_step}: lower model.lr or set model.grad_clip")
        self.center.copy_(updated_center(self.center, teacher, self.hparams.center_momentum))
        with torch.no_grad():  # collapse monitors: a sharp teacher per image, a flat one over the batch
            probs = torch.softmax((torch.cat(teacher) - self.center) / self.hparams.teacher_temp, -1)
            per_image = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
            mean = probs.mean(0)
            over_batch = -(mean * mean.clamp_min(1e-12).log()).sum()
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/teacher_entropy", per_image)
        self.log("train/batch_entropy", over_batch)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        total = int(self.trainer.estimated_stepping_batches)
        momentum = teacher_momentum(self.global_step - 1, total, self.hparams.teacher_momentum)
        ema_update(self.teacher, self.student, momentum)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        if self.hparams.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.hparams.grad_clip)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW without decay on biases and norms; linear warm-up, then a cosine to ``min_lr``."""
        params = [p for p in self.student.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": self.hparams.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * self.hparams.warmup_fraction)
        floor = self.hparams.min_lr / self.hparams.lr

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The teacher ViT's weights in timm keys: what ``backbone.weights=PATH`` loads."""
        return {k: v.detach().cpu().clone() for k, v in self.teacher["backbone"].state_dict().items()}
