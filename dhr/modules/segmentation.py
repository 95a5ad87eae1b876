"""Supervised DeepLabv3+ LightningModule: SGD with 10x head LR, poly schedule, val mIoU.

Takes plain keyword arguments only (no nn.Modules), so checkpoints rebuild the model from
their hyper-parameters alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from dhr.errors import DHRError
from dhr.models.backbones import backbone_from_cfg
from dhr.models.deeplabv3plus import DeepLabV3Plus
from dhr.modules.base import DHRLightningModule
from dhr.modules.optim import OptimConfig, poly_sgd
from dhr.ops.argmax import argmax
from dhr.ops.inference import labels_per_size, multiscale_probs


def build_deeplabv3plus(*, num_classes: int, backbone: dict[str, Any], aspp_channels: int,
                        low_level_channels: int, decoder_channels: int, dropout: Sequence[float]) -> DeepLabV3Plus:
    net, output_stride = backbone_from_cfg(backbone)
    return DeepLabV3Plus(backbone=net, num_classes=num_classes, output_stride=output_stride,
                         aspp_channels=aspp_channels, low_level_channels=low_level_channels,
                         decoder_channels=decoder_channels, dropout=dropout)


def legacy_nearest(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Downsample an (N, H, W) label map with PyTorch legacy ``nearest`` (source = floor(dst*in/out))."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


class SegmentationModule(DHRLightningModule):
    """Every value comes from ``conf/model/deeplabv3plus.yaml``; ``infer`` is set by whoever predicts."""

    infer_keys: tuple[str, ...] = ("scales", "flip")  # the infer node's keys predict_step reads
    writes_crf = True  # with infer.crf, predictions come in a CRF and a no-CRF version

    def __init__(
        self,
        *,
        num_classes: int,
        backbone: dict[str, Any],
        ignore_index: int,
        aspp_channels: int,
        low_level_channels: int,
        decoder_channels: int,
        dropout: Sequence[float],
        optim: dict[str, float],
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optim = OptimConfig.from_cfg(optim)
        self.infer: dict[str, Any] = {"scales": [1.0], "flip": False}  # single-scale until a predictor sets infer
        self.ignore_index = ignore_index
        self.net = build_deeplabv3plus(num_classes=num_classes, backbone=backbone, aspp_channels=aspp_channels,
                                       low_level_channels=low_level_channels, decoder_channels=decoder_channels,
                                       dropout=dropout)
        self.val_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Stride-4 logits."""
        return self.net(image)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.net(batch["image"])
        target = legacy_nearest(batch["mask"], logits.shape[-2:])
        loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        if not torch.isfinite(loss):
            raise DHRError(
                f"training loss is {loss.item()} at step {self.global_step}: lower model.optim.lr "
                f"(now {self.optim.lr}), check the masks hold class ids < {self.hparams.num_classes} or "
                f"{self.ignore_index}, or use trainer.precision=32-true"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=logits.shape[0])
        return loss

    # -- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        def scores(image: torch.Tensor) -> torch.Tensor:
            return F.interpolate(self.net(image), size=image.shape[-2:], mode="bilinear", align_corners=False)

        pred = labels_per_size(scores, batch["image"], batch["orig_hw"], self.ignore_index)
        self.val_confusion.update(pred, batch["mask"])
        return {"pred": pred}  # for callbacks (W&B masks)

    def on_validation_epoch_end(self) -> None:
        self.log_val_confusion(self.val_confusion)

    # -- prediction -----------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        probs = multiscale_probs(self.net, batch["image"], self.infer["scales"], self.infer["flip"])
        out = {"id": batch["id"], "label": argmax(probs, 1).to(torch.uint8).cpu()}
        if self.infer.get("crf"):
            out["label_crf"] = self.crf_labels(batch["image"], probs)
        return out

    # -- optimisation ---------------------------------------------------------------------------
    def head_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters trained at ``head_lr_mult`` x the backbone LR."""
        return list(self.net.head.parameters())

    def configure_optimizers(self) -> dict[str, Any]:
        return poly_sgd(self.net.backbone.parameters(), self.head_parameters(), self.optim,
                        self.trainer.estimated_stepping_batches)
