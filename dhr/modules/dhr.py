"""DHR refinement stage (``dhr-method.md`` §3-9): DeepLabv3+ with a CAM head whose training
masks are rebuilt every step by the online hierarchical rebalancing of :mod:`dhr.ops.relabel`.

Each step: forward (logits, CAMs, C4, C5) → relabel the initial WSS masks of the crops under
``no_grad`` (Step 1 OT seeds from the CAMs, Step 2 USS prototypes, Step 3 WSS rebalancing, CRF)
→ cross-entropy on the rebuilt masks + multi-label soft-margin on the CAMs. Prediction adds the
class threshold and dense CRF of §9, so ``dhr.predict model=dhr split=train`` writes DHR masks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dhr.errors import DHRError
from dhr.modules.segmentation import SegmentationModule, legacy_nearest
from dhr.ops.argmax import argmax
from dhr.ops.inference import multiscale_probs
from dhr.ops.relabel import RelabelConfig, cam_box, relabel
from dhr.utils.checkpoint import MODULE_KEY, model_weights, read_checkpoint

CAM_MODULE = "dhr.modules.cam.CAMModule"


class DHRModule(SegmentationModule):
    writes_crf = True  # with infer.crf, predictions come in a CRF and a no-CRF version
    infer_keys = ("scales", "flip", "crf", "threshold", "fp16_maps")  # conf/model/dhr.yaml

    def __init__(self, *, num_classes: int, backbone: dict[str, Any], background_id: int | None,
                 dhr: dict[str, Any], crf: dict[str, Any], channels_last: bool, init_from: str | None,
                 **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, backbone=backbone, **kwargs)
        self.save_hyperparameters()
        self.relabel_cfg = RelabelConfig.from_cfg(dhr)
        self.init_crf(crf)
        self.background_id = background_id
        self.num_foreground = num_classes - (background_id is not None)
        self.output_stride = int(backbone["output_stride"])
        self.cam_head = nn.Conv2d(self.net.backbone.feature_info.channels()[-1], self.num_foreground, 1, bias=False)
        nn.init.kaiming_normal_(self.cam_head.weight, mode="fan_out", nonlinearity="relu")
        if init_from:
            self.init_from_cam(init_from)
        self.channels_last = channels_last
        if channels_last:  # C4/C5 come out channels-last: the relabelling's reductions over channels run fastest so
            self.net.to(memory_format=torch.channels_last)

    def init_from_cam(self, ckpt: str) -> None:
        """Start the backbone and the CAM head from a ``model=cam`` checkpoint (its EMA weights).

        Project choice (not in the release): the seed classifier is trained on the same tags, so
        this is the "pretrained backbone" of a setting with no ImageNet weights.
        """
        state = read_checkpoint(ckpt, "model.init_from")
        if state.get(MODULE_KEY) != CAM_MODULE:
            raise DHRError(f"model.init_from={ckpt}: not a model=cam checkpoint (found {state.get(MODULE_KEY)})")
        weights = model_weights(state, ckpt)
        backbone = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
        try:
            missing, unexpected = self.net.backbone.load_state_dict(backbone, strict=False)
            self.cam_head.load_state_dict({"weight": weights["classifier.weight"]})
        except (RuntimeError, KeyError) as err:
            raise DHRError(f"model.init_from={ckpt}: does not fit this backbone/classes ({str(err).splitlines()[0]}); "
                           "train the CAM baseline with the same backbone and dataset") from None
        if unexpected or [k for k in missing if "num_batches_tracked" not in k]:
            raise DHRError(f"model.init_from={ckpt}: backbone keys do not fit (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}); use the same backbone as the CAM run")

    # -- network --------------------------------------------------------------------------------
    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.net.head.parameters(), *self.cam_head.parameters()]

    def cams_from_c5(self, c5: torch.Tensor) -> torch.Tensor:
        """Raw CAMs at stride 16: C5 halved (bilinear, align_corners=True) at output stride 8, as is at 16."""
        if self.output_stride == 8:
            c5 = F.interpolate(c5, scale_factor=0.5, mode="bilinear", align_corners=True)
        return self.cam_head(c5)

    def forward_train(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        out = self.net.forward_features(image)
        out["cams"] = self.cams_from_c5(out["c5"])
        return out

    # -- training -------------------------------------------------------------------------------
    def box_mean_cams(self, cams: torch.Tensor, boxes: torch.Tensor, canvas: int) -> torch.Tensor:
        """Global average of the raw CAMs over each crop box in CAM cells (§8): (B, C_fg)."""
        mask = torch.zeros(cams.shape[0], 1, *cams.shape[-2:], device=cams.device, dtype=cams.dtype)
        for i, box in enumerate(boxes.tolist()):
            cy0, cx0, cy1, cx1 = cam_box(box, tuple(cams.shape[-2:]), canvas)
            mask[i, :, cy0:cy1, cx0:cx1] = 1
        return (cams * mask).sum((2, 3)) / mask.sum((2, 3))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image, seeds = batch["image"], batch["mask"]
        if "tags" not in batch:
            raise DHRError("model=dhr needs image-level tags of the training split (xml/ or cls_labels.json)")
        out = self.forward_train(image)
        n = image.shape[0]
        target = seeds
        if self.relabel_cfg.enabled:
            feats = [out[name].detach() for name in self.relabel_cfg.ws_layers]
            result = relabel(seeds, cams=out["cams"].detach(), tags=batch["tags"], images=image, boxes=batch["crop_box"],
                             uss=batch.get("uss"), wss_feats=feats, num_classes=self.hparams.num_classes,
                             background_id=self.background_id, cfg=self.relabel_cfg, crf=self.crf_runner)
            target = result.masks
            crop_pixels = ((batch["crop_box"][:, 2] - batch["crop_box"][:, 0]) *
                           (batch["crop_box"][:, 3] - batch["crop_box"][:, 1])).float()
            for step, count in result.changed.items():
                self.log(f"train/dhr_changed_{step}", (count.float() / crop_pixels).mean(), on_step=False,
                         on_epoch=True, batch_size=n, sync_dist=True)
        if "gt" in batch:  # a diagnostic only: agreement of the training masks with GT, never used to train
            gt = batch["gt"]
            for name, masks in (("seed", seeds), ("mask", target)):
                scored = (masks != self.ignore_index) & (gt != self.ignore_index)
                agree = ((masks == gt) & scored).sum().float() / scored.sum().clamp_min(1)
                self.log(f"train/{name}_gt_acc", agree, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.last_relabel = {"image": image[0].detach(), "seed": seeds[0].detach(), "dhr": target[0].detach()}  # W&B
        logits = out["logits"]
        seg = F.cross_entropy(logits, legacy_nearest(target, logits.shape[-2:]), ignore_index=self.ignore_index)
        cls = F.multilabel_soft_margin_loss(self.box_mean_cams(out["cams"], batch["crop_box"], image.shape[-1]),
                                            batch["tags"].to(logits.dtype))
        loss = seg + cls
        if not torch.isfinite(loss):
            raise DHRError(f"training loss is {loss.item()} (seg {seg.item()}, cls {cls.item()}) at step "
                           f"{self.global_step}: lower model.optim.lr (now {self.optim.lr}) or use trainer.precision=32-true")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/loss_cls", cls, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    # -- prediction (§9) ------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        inf = self.infer
        probs = multiscale_probs(self.net, batch["image"], inf["scales"], inf["flip"]).float()
        out = {"id": batch["id"], "label": argmax(probs, 1).to(torch.uint8).cpu()}
        if inf["crf"]:
            out["label_crf"] = torch.stack([self.threshold_crf(im, p, float(inf["threshold"]))
                                            for im, p in zip(batch["image"], probs, strict=True)])
        return out

    def threshold_crf(self, image: torch.Tensor, probs: torch.Tensor, threshold: float) -> torch.Tensor:
        """Keep classes whose max probability exceeds ``threshold`` (else the best one), CRF, argmax."""
        peak = probs.amax(dim=(1, 2))
        kept = torch.nonzero(peak > threshold).flatten()
        if len(kept) == 0:
            kept = peak.argmax().view(1)
        maps = probs[kept].float()
        if self.infer["fp16_maps"]:
            maps = maps.half().float()
        q = self.crf_runner.on_normalised(image[None], maps[None])[0]
        return kept[argmax(q, 0)].to(torch.uint8).cpu()

