"""Built-in CAM baseline: a multi-label classifier whose class activation maps become seed masks.

Training uses image-level tags only (multi-label soft-margin loss on the global average of the
CAMs). Prediction: multi-scale + flip CAMs of the tagged classes, each max-normalised, a
background channel by ``power`` ((1 - max_c CAM)^gamma) or ``threshold`` (a constant), optional
dense CRF, argmax → seed PNGs in the layout external seeds use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from dhr.errors import DHRError
from dhr.models.backbones import create_backbone

DEFAULT_OPTIM = {"lr": 0.01, "head_lr_mult": 10.0, "momentum": 0.9, "weight_decay": 1e-4, "poly_power": 0.9}


class CAMModule(pl.LightningModule):
    needs_tags = True  # prediction reads the split's image-level tags
    writes_crf = True  # with infer.crf, predictions come in a CRF and a no-CRF version

    def __init__(self, *, num_classes: int, backbone: dict[str, Any], background_id: int | None = 0,
                 optim: dict[str, float] | None = None, infer: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        num_foreground = num_classes - (background_id is not None)
        cfg = dict(backbone)
        name, output_stride = cfg.pop("name"), int(cfg.pop("output_stride", 16))
        self.backbone = create_backbone(name, output_stride=output_stride, out_indices=(4,), **cfg)
        self.classifier = nn.Conv2d(self.backbone.feature_info.channels()[-1], num_foreground, 1, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.01)
        self.optim = {**DEFAULT_OPTIM, **(optim or {})}
        self.infer = dict(infer or {})

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
        """ReLU CAMs summed over scales and flips, at the image size (N, C_fg, H, W)."""
        h, w = image.shape[-2:]
        total = None
        for s in scales:
            x = image if s == 1.0 else F.interpolate(image, size=(int(h * s), int(w * s)), mode="bilinear", align_corners=False)
            if flip:
                x = torch.cat([x, x.flip(-1)])
            cam = F.relu(self.cams(x))
            cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
            if flip:
                n = image.shape[0]
                cam = cam[:n] + cam[n:].flip(-1)
            total = cam if total is None else total + cam
        return total

    def seed_probs(self, cams: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) class scores: tagged classes' max-normalised CAMs plus a background channel."""
        inf = self.infer
        cams = cams * tags[:, :, None, None]
        cams = cams / cams.amax(dim=(2, 3), keepdim=True).clamp_min(1e-5)
        fg_max = cams.amax(dim=1, keepdim=True)
        mode = inf.get("bg_mode", "power")
        if mode == "power":
            bg = (1 - fg_max).clamp_min(0) ** float(inf.get("bg_gamma", 2.0))
        elif mode == "threshold":
            bg = torch.full_like(fg_max, float(inf.get("bg_threshold", 0.3)))
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
        cams = self.multiscale_cams(batch["image"], list(inf.get("scales", [1.0])), bool(inf.get("flip", True)))
        scores = self.seed_probs(cams, batch["tags"])
        labels = scores.argmax(1)
        out = {"id": batch["id"], "label": labels.to(torch.uint8).cpu()}
        if inf.get("crf", False):
            from dhr.ops.crf import denormalize, dense_crf_many

            probs = scores / scores.sum(1, keepdim=True).clamp_min(1e-5)
            images = [denormalize(im) for im in batch["image"].float().cpu().numpy()]
            q = dense_crf_many(images, list(probs.float().cpu().numpy()))
            out["label_crf"] = torch.from_numpy(np.stack(q).argmax(1).astype(np.uint8))
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        optimizer = torch.optim.SGD(
            [{"params": self.backbone.parameters(), "lr": o["lr"]},
             {"params": self.classifier.parameters(), "lr": o["lr"] * o["head_lr_mult"]}],
            lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1 - t / total) ** o["poly_power"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dhr_module"] = "dhr.modules.cam.CAMModule"
