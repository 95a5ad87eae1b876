"""Mask2Former LightningModule for semantic segmentation on (DHR) masks: the official optimisation recipe.

Same interfaces as :class:`~dhr.modules.segmentation.SegmentationModule`: plain keyword
arguments (checkpoints rebuild it), ``val/mIoU`` from the confusion matrix, multi-scale + flip
prediction with the CRF option. Defaults (``conf/model/mask2former.yaml``) are the official ones:
AdamW lr 1e-4, weight decay 0.05, backbone LR x0.1, no decay on norms and embeddings, poly
schedule, the whole model's gradient norm clipped at 0.01.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from dhr.errors import DHRError
from dhr.models.backbones import backbone_from_cfg
from dhr.models.mask2former import Mask2Former, semantic_inference, semantic_to_instances
from dhr.modules.base import DHRLightningModule
from dhr.modules.optim import AdamWConfig, poly_adamw
from dhr.ops.argmax import argmax
from dhr.ops.inference import labels_per_size, multiscale_probs


def build_mask2former(*, num_classes: int, backbone: dict[str, Any], output_stride: int, **settings: Any) -> Mask2Former:
    """Mask2Former on a ``conf/backbone`` node at ``output_stride`` (``model.output_stride``, not the DeepLab
    setting ``backbone.output_stride``): 32 is the official undilated backbone."""
    backbone = {**backbone, "output_stride": output_stride}
    net, _ = backbone_from_cfg(backbone)
    return Mask2Former(backbone=net, num_classes=num_classes, **settings)


class Mask2FormerModule(DHRLightningModule):
    """Every value comes from ``conf/model/mask2former.yaml``; ``infer`` is set by whoever predicts."""

    infer_keys: tuple[str, ...] = ("scales", "flip")
    writes_crf = True  # with infer.crf, predictions come in a CRF and a no-CRF version

    def __init__(self, *, num_classes: int, backbone: dict[str, Any], ignore_index: int, output_stride: int, num_queries: int,
                 dec_layers: int, hidden_dim: int, mask_dim: int, enc_layers: int, dim_feedforward: int,
                 enc_dim_feedforward: int, nheads: int, class_weight: float, mask_weight: float, dice_weight: float,
                 no_object_weight: float, train_num_points: int, oversample_ratio: float,
                 importance_sample_ratio: float, exclude_ignore: bool, optim: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optim = AdamWConfig.from_cfg(optim)
        self.infer: dict[str, Any] = {"scales": [1.0], "flip": False}
        self.ignore_index = ignore_index
        self.net = build_mask2former(
            num_classes=num_classes, backbone=backbone, output_stride=output_stride, num_queries=num_queries, dec_layers=dec_layers,
            hidden_dim=hidden_dim, mask_dim=mask_dim, enc_layers=enc_layers, dim_feedforward=dim_feedforward,
            enc_dim_feedforward=enc_dim_feedforward, nheads=nheads, class_weight=class_weight,
            mask_weight=mask_weight, dice_weight=dice_weight, no_object_weight=no_object_weight,
            train_num_points=train_num_points, oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio, exclude_ignore=exclude_ignore)
        self.val_confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) semantic scores at the input resolution."""
        return self.net.semantic_scores(image)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        layers = self.net(image)
        targets = [semantic_to_instances(m, self.hparams.num_classes, self.ignore_index) for m in mask]
        (class_logits, mask_logits), aux = layers[-1], layers[:-1]
        terms = self.net.criterion(class_logits, mask_logits, targets, aux)
        loss = torch.stack(list(terms.values())).sum()
        if not torch.isfinite(loss):
            raise DHRError(f"Mask2Former training loss is {loss.item()} at step {self.global_step}: lower "
                           f"model.optim.lr (now {self.optim.lr}) or use trainer.precision=32-true")
        n = image.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        for key in ("loss_cross_entropy", "loss_mask", "loss_dice"):  # the last layer's terms
            self.log(f"train/{key.removeprefix('loss_')}", terms[key], on_step=False, on_epoch=True, batch_size=n)
        return loss

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """The official full-model clip (L2 norm of every gradient together), unless the trainer sets its own."""
        clip = gradient_clip_val if gradient_clip_val is not None else self.optim.clip_grad_norm
        if clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    # -- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        def scores(image: torch.Tensor) -> torch.Tensor:
            class_logits, mask_logits = self.net(image)[-1]
            return semantic_inference(class_logits, mask_logits, image.shape[-2:])

        pred = labels_per_size(scores, batch["image"], batch["orig_hw"], self.ignore_index)
        self.val_confusion.update(pred, batch["mask"])
        return {"pred": pred}  # for callbacks (W&B masks)

    def on_validation_epoch_end(self) -> None:
        self.log_val_confusion(self.val_confusion)

    # -- prediction -----------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        image = batch["image"]
        scores = multiscale_probs(self.net.semantic_scores, image, self.infer["scales"], self.infer["flip"], softmax=False)
        out = {"id": batch["id"], "label": argmax(scores, 1).to(torch.uint8).cpu()}
        if self.infer.get("crf"):
            out["label_crf"] = self.crf_labels(image, scores)
        return out

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        return poly_adamw(self.net, self.net.backbone, self.optim, self.trainer.estimated_stepping_batches)
