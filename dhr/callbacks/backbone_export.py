"""Write a self-supervised module's backbone as a plain weights file when training ends.

CAUSE reads a frozen ViT from ``backbone.weights=PATH``; this callback gives it the DINO teacher
of ``model=dino`` in that format (timm keys, the layout of the official DINO files), written
atomically so that a killed run never leaves half a file for the next stage to read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from dhr.utils.io import atomic_torch_save

log = logging.getLogger(__name__)


class BackboneExport(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        atomic_torch_save(self.path, pl_module.backbone_state_dict())
        log.info("backbone weights: %s (backbone.weights=%s loads them)", self.path, self.path)
