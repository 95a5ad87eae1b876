"""What a W&B run shows beyond scalars, at every validation: the per-class scores as a table and a
few validation images with their GT and prediction as ``wandb.Image`` masks, plus, for DHR, the
last training crop with its seed and its DHR mask. A no-op without a ``WandbLogger``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl

from dhr.ops.crf import denormalize


def wandb_logger(trainer: pl.Trainer) -> Any:
    from pytorch_lightning.loggers import WandbLogger

    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class WandbMedia(pl.Callback):
    """``images`` validation images per validation (rank 0 only)."""

    def __init__(self, images: int = 4) -> None:
        self.images = int(images)
        self._samples: list[dict[str, np.ndarray]] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._samples = []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if (not trainer.is_global_zero or wandb_logger(trainer) is None or not isinstance(outputs, dict)
                or "pred" not in outputs or len(self._samples) >= self.images):
            return
        rgb = denormalize(batch["image"].detach().float().cpu(), "round").numpy()
        for i in range(min(len(rgb), self.images - len(self._samples))):
            h, w = (int(v) for v in batch["orig_hw"][i])
            self._samples.append({"id": batch["id"][i], "image": rgb[i, :h, :w],
                                  "ground truth": batch["mask"][i, :h, :w].cpu().numpy(),
                                  "prediction": outputs["pred"][i, :h, :w].cpu().numpy()})

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = wandb_logger(trainer)
        if logger is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        import wandb

        info = getattr(getattr(trainer, "datamodule", None), "info", None)
        classes = list(info.classes) if info is not None else []
        labels = {i: name for i, name in enumerate(classes)} | {255: "ignore"}
        log: dict[str, Any] = {}
        scores = getattr(pl_module, "last_val_scores", None)
        if scores is not None:
            rows = [[name, _num(scores.iou[i]), _num(scores.fpr[i]), _num(scores.fnr[i])]
                    for i, name in enumerate(classes[: len(scores.iou)])]
            log["val/per_class"] = wandb.Table(columns=["class", "IoU", "FPR", "FNR"], data=rows)
        if self._samples:
            log["val/masks"] = [wandb.Image(s["image"], caption=str(s["id"]), masks={
                key: {"mask_data": s[key].astype(np.uint8), "class_labels": labels} for key in ("ground truth", "prediction")})
                for s in self._samples]
        last = getattr(pl_module, "last_relabel", None)
        if last is not None:  # DHR: the last training crop, its seed and its rebuilt mask
            image = denormalize(last["image"].float().cpu()[None], "round").numpy()[0]
            log["train/relabelling"] = wandb.Image(image, caption="training crop: seed and DHR mask", masks={
                key: {"mask_data": last[key].cpu().numpy().astype(np.uint8), "class_labels": labels}
                for key in ("seed", "dhr")})
        if log:
            logger.experiment.log({**log, "trainer/global_step": trainer.global_step})


def _num(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)

