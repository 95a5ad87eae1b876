"""Checkpoints written to a temporary sibling and renamed into place.

Lightning's own writer opens the final path and writes into it: a job killed while saving (Slurm
pre-emption, out of time) leaves a truncated ``last.ckpt`` and nothing to resume from. Here the
previous file stays whole until the new one is complete.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.plugins.io import TorchCheckpointIO

from dhr.utils.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_torch_save(path, checkpoint)
