"""Mid-epoch checkpoints that resume exactly: a killed run resumed with ``ckpt_path=last`` reaches the
metrics of the uninterrupted run.

Saved with every checkpoint: where in the epoch's shuffle training stands and the main process's
random states. On resume the datamodule's :class:`~dhr.data.sampler.EpochShuffle` starts at that
item. Each item reseeds the random states from (seed, epoch, index) as it loads, so with
``num_workers=0`` the states at every step are already those of the uninterrupted run; with worker
processes the main process's states (the model's draws, e.g. dropout) are put back just before
the first resumed step.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

KEY = "dhr_resume"


class ExactResume(pl.Callback):
    def __init__(self) -> None:
        self._states: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint[KEY] = {"epoch": trainer.current_epoch, "batches": progress.processed, "python": random.getstate(),
                           "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                           "torch": torch.get_rng_state()}  # tensors and plain values: loads with weights_only

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(KEY)
        datamodule = getattr(trainer, "datamodule", None)
        if saved is None or datamodule is None or not hasattr(datamodule, "resume_at"):
            return
        datamodule.resume_at = (int(saved["epoch"]), int(saved["batches"]))
        self._states = saved

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # Loaded in this process, the batch's items have just reseeded the random states: they are
        # already those of the uninterrupted run. From worker processes they have not: put them back.
        loader = trainer.train_dataloader
        if self._states is not None and getattr(loader, "num_workers", 0) > 0:
            random.setstate(self._states["python"])
            kind, keys, pos, has_gauss, gauss = self._states["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            torch.set_rng_state(self._states["torch"])
        self._states = None
