"""Write each predicted label map as a palette PNG, atomically, as soon as its batch is done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from dhr.utils.io import save_label_png


class PaletteWriter(BasePredictionWriter):
    def __init__(self, out_dir: str | Path, palette: np.ndarray) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.palette = palette
        self.written = 0

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        for image_id, label, hw in zip(prediction["id"], prediction["label"], batch["orig_hw"], strict=True):
            h, w = int(hw[0]), int(hw[1])
            save_label_png(self.out_dir / f"{image_id}.png", label[:h, :w].numpy(), self.palette)
            self.written += 1
