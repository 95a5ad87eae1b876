"""Built-in CAM baseline: a multi-label classifier whose class activation maps become seed masks.

Training uses image-level tags only (multi-label soft-margin loss on the global average of the
CAMs). Prediction: multi-scale + flip CAMs of the tagged classes, each max-normalised, a
background channel by ``power`` ((1 - max_c CAM)^gamma) or ``threshold`` (a constant), optional
dense CRF, argmax → seed PNGs in the layout external seeds use.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dhr.errors import DHRError
from dhr.models.backbones import backbone_from_cfg
from dhr.modules.base import DHRLightningModule
from dhr.modules.optim import OptimConfig, poly_sgd
from dhr.ops.argmax import argmax
from dhr.ops.inference import multiscale_flip


class CAMModule(DHRLightningModule):
    needs_tags = True  # prediction reads the split's image-level tags
    writes_crf = True  # with infer.crf, predictions come in a CRF and a no-CRF version
    infer_keys = ("scales", "flip", "crf", "bg_mode", "bg_gamma", "bg_threshold")  # conf/model/cam.yaml

    def __init__(self, *, num_classes: int, backbone: dict[str, Any], background_id: int | None,
                 optim: dict[str, float], crf: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        num_foreground = num_classes - (background_id is not None)
        self.backbone, _ = backbone_from_cfg(backbone, out_indices=(4,))
        self.classifier = nn.Conv2d(self.backbone.feature_info.channels()[-1], num_foreground, 1, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.01)
        self.optim = OptimConfig.from_cfg(optim)
        self.init_crf(crf)
        self.infer: dict[str, Any] = {}  # set by dhr.predict from the infer node

    def cams(self, image: torch.Tensor) -> torch.Tensor:
        """Raw CAMs (N, C_fg, h, w) at the backbone's stride."""
        return self.classifier(self.backbone(image)[-1])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.cams(batch["image"]).mean(dim=(2, 3))
        loss = F.multilabel_soft_margin_loss(logits, batch["tags"])
        if not torch.isfinite(loss):
            raise DHRError(f"CAM loss is {loss.item()} at step {self.global_step}: lower model.optim.lr")
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    @torch.no_grad()
    def multiscale_cams(self, image: torch.Tensor, scales: list[float], flip: bool) -> torch.Tensor:
        """ReLU CAMs summed over scales and flips, at the image size (N, C_fg, H, W); bilinear, align_corners=False."""
        total, _ = multiscale_flip(lambda x: F.relu(self.cams(x)), image, scales, flip=flip, align_corners=False,
                                   out_size=tuple(image.shape[-2:]))
        return total

    def seed_probs(self, cams: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) class scores: tagged classes' max-normalised CAMs plus a background channel."""
        inf = self.infer
        cams = cams * tags[:, :, None, None]
        cams = cams / cams.amax(dim=(2, 3), keepdim=True).clamp_min(1e-5)
        fg_max = cams.amax(dim=1, keepdim=True)
        mode = inf["bg_mode"]
        if mode == "power":
            bg = (1 - fg_max).clamp_min(0) ** float(inf["bg_gamma"])
        elif mode == "threshold":
            bg = torch.full_like(fg_max, float(inf["bg_threshold"]))
        else:
            raise DHRError(f"infer.bg_mode={mode!r}: use power or threshold")
        n, _, h, w = cams.shape
        scores = cams.new_zeros((n, self.hparams.num_classes, h, w))
        fg_ids = [c for c in range(self.hparams.num_classes) if c != self.hparams.background_id]
        scores[:, fg_ids] = cams
        if self.hparams.background_id is not None:
            scores[:, self.hparams.background_id] = bg[:, 0]
        return scores

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        inf = self.infer
        if "tags" not in batch:
            raise DHRError("CAM seeds need image-level tags for the predicted split (xml/ or cls_labels.json)")
        cams = self.multiscale_cams(batch["image"], list(inf["scales"]), bool(inf["flip"]))
        scores = self.seed_probs(cams, batch["tags"])
        labels = argmax(scores, 1)
        out = {"id": batch["id"], "label": labels.to(torch.uint8).cpu()}
        if inf["crf"]:
            out["label_crf"] = self.crf_labels(batch["image"], scores)
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        return poly_sgd(self.backbone.parameters(), self.classifier.parameters(), self.optim,
                        self.trainer.estimated_stepping_batches)
