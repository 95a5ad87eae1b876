"""Progress that reads in a terminal and in a log file alike.

On a terminal the rich bars draw; when stdout is not a terminal (Slurm, nohup, CI, a pipe) they
would print nothing useful, so :class:`LogProgress` writes a plain log line every
``every_seconds``: stage, epoch, step / total, loss, images/s and ETA.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

from dhr.utils.progress import rate_and_eta

log = logging.getLogger("dhr.progress")  # the same logger as dhr.utils.progress


class LogProgress(ProgressBar):
    """Plain periodic log lines for training, validation and prediction (no terminal control codes)."""

    def __init__(self, every_seconds: float) -> None:
        super().__init__()
        self.every_seconds = float(every_seconds)
        self._enabled = True
        self._start = self._last = 0.0
        self._images = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _begin(self) -> None:
        self._start = self._last = time.perf_counter()
        self._images = 0

    def _tick(self, stage: str, trainer: pl.Trainer, done: int, total: int | float, batch: Any,
              extra: str = "", force: bool = False) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        self._images += _batch_size(batch)
        now = time.perf_counter()
        if not force and now - self._last < self.every_seconds:
            return
        self._last = now
        of = f"/{int(total)}" if total != float("inf") else ""
        log.info("%s: step %d%s%s, %s", stage, done, of, extra, rate_and_eta(done, total, self._images, now - self._start))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        extra = f" (epoch {trainer.current_epoch + 1}/{trainer.max_epochs})" + (f", loss {float(loss):.4f}" if loss is not None else "")
        total = self.total_train_batches
        last = isinstance(total, int) and batch_idx + 1 == total
        self._tick("train", trainer, batch_idx + 1, total, batch, extra, force=last)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero and not trainer.sanity_checking:
            shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            if shown:
                log.info("validation (epoch %d): %s", trainer.current_epoch + 1,
                         ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())))

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin()

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        total = trainer.num_predict_batches[dataloader_idx]
        last = isinstance(total, int) and batch_idx + 1 == total
        self._tick("predict", trainer, batch_idx + 1, total, batch, force=last)


def _batch_size(batch: Any) -> int:
    """Images in a batch: its ``image`` tensor, or the first of its ``crops`` (DINO's multi-crop views)."""
    if not isinstance(batch, dict):
        return 1
    image = batch.get("image")
    if image is None and batch.get("crops"):
        image = batch["crops"][0]
    return int(image.shape[0]) if image is not None else 1


def progress_bar(every_seconds: float, terminal: bool | None = None) -> ProgressBar:
    """The rich bars on a terminal, :class:`LogProgress` lines otherwise (``callbacks.progress_bar``)."""
    on_terminal = sys.stdout.isatty() if terminal is None else terminal
    return RichProgressBar() if on_terminal else LogProgress(every_seconds)
