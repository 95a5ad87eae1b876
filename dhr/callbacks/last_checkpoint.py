"""``last.ckpt``: the one file ``ckpt_path=last`` resumes from and the pipeline's next stage reads.

One callback writes it: every ``every_n_train_steps`` optimizer steps (mid-epoch, so a pre-empted
job loses little), at the end of every training epoch (after that epoch's validation) and at the
end of training, so it always holds the newest state. Lightning's ``ModelCheckpoint(save_last=True)``
cannot be used twice for this: the second one finds ``last.ckpt`` taken and writes ``last-v1.ckpt``,
and ``last.ckpt`` can then be older than the finished run. As a ``Checkpoint`` it runs after the
other callbacks (Lightning orders checkpoint callbacks last), so the file holds their updated state,
``best.ckpt``'s record included.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

log = logging.getLogger(__name__)
FILENAME = "last.ckpt"


class LastCheckpoint(Checkpoint):
    def __init__(self, dirpath: str, every_n_train_steps: int | None = 500) -> None:
        if every_n_train_steps is not None and (isinstance(every_n_train_steps, bool) or every_n_train_steps < 1):
            raise ValueError(f"every_n_train_steps={every_n_train_steps!r}: use a step count >= 1, or null "
                             "for epoch ends only")
        self.dirpath = str(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self._saved_step: int | None = None  # global step of the last save

    @property
    def path(self) -> Path:
        return Path(self.dirpath) / FILENAME

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a job killed while saving leaves the temporary sibling of dhr.utils.io.atomic_write_bytes
        partial = sorted(Path(self.dirpath).glob(".*.ckpt.*.tmp")) if trainer.is_global_zero else []
        for path in partial:
            path.unlink(missing_ok=True)
        if partial:
            log.info("removed %d partial checkpoint file(s) of an interrupted save in %s", len(partial), self.dirpath)

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        every = self.every_n_train_steps
        last_of_epoch = getattr(trainer.fit_loop.epoch_loop.batch_progress, "is_last_batch", False)
        if every and step > 0 and step % every == 0 and not last_of_epoch and self._saved_step != step:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved_step != trainer.global_step:
            self._save(trainer)  # stopped inside an epoch (max_steps, limit reached)
