"""Write each predicted label map as a palette PNG, atomically, as soon as its batch is done."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from dhr.utils.io import save_label_png


class PaletteWriter(BasePredictionWriter):
    """``out_dirs`` maps prediction keys (``label``, ``label_crf`` ...) to folders; default: ``label`` → ``out_dir``."""

    def __init__(self, out_dir: str | Path, palette: np.ndarray, out_dirs: dict[str, Path] | None = None) -> None:
        super().__init__(write_interval="batch")
        self.out_dirs = {k: Path(v) for k, v in (out_dirs or {"label": Path(out_dir)}).items()}
        self.palette = palette

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        for key, folder in self.out_dirs.items():
            for image_id, label, hw in zip(prediction["id"], prediction[key], batch["orig_hw"], strict=True):
                h, w = int(hw[0]), int(hw[1])
                save_label_png(folder / f"{image_id}.png", label[:h, :w].numpy(), self.palette)
