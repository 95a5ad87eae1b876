"""Callbacks that end a training run the way a cluster does, for the resume tests (``+callbacks.kill._target_=...``;
a subprocess finds this module with ``PYTHONPATH=tests``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl


class KillAt(pl.Callback):
    """SIGKILL this process after training step ``step``: no clean-up, no checkpoint, as a pre-empted job."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillAllAt(pl.Callback):
    """SIGKILL the launcher and every rank at once after step ``step`` (a pre-empted node); rank 0 sends it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.killpg(os.getpgid(0), signal.SIGKILL)


class PreemptAt(pl.Callback):
    """Send the job the signal a scheduler sends on pre-emption, once (the marker file remembers)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            from submitit.local.local import LocalJobEnvironment

            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), LocalJobEnvironment._usr_sig())
