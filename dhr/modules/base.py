"""What every dhr LightningModule shares: a class tag in its checkpoints and one CRF runner.

The tag (``dhr_module``) lets ``dhr.predict`` and ``dhr.features`` rebuild any module from its
hyper-parameters alone. Modules that run dense CRFs take the ``crf`` config node as a plain dict
and run every CRF through one :class:`~dhr.ops.crf.CRFRunner` (on the batch's device with the
torch backend); ``dhr.predict`` swaps in the
``crf`` node of its own command line with :meth:`DHRLightningModule.set_crf`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from dhr.ops.argmax import argmax
from dhr.ops.crf import CRFParams, CRFRunner
from dhr.ops.metrics import scores_from_confusion
from dhr.utils.checkpoint import MODULE_KEY, module_tag


class DHRLightningModule(pl.LightningModule):
    crf_runner: CRFRunner | None = None

    def init_crf(self, crf: Mapping[str, Any]) -> None:
        self.crf_runner = CRFRunner(CRFParams.from_cfg(crf))

    def set_crf(self, params: CRFParams) -> None:
        """Run later CRFs with ``params`` (``dhr.predict crf.*=...``)."""
        if self.crf_runner is not None:
            self.crf_runner.close()
        self.crf_runner = CRFRunner(params)

    def crf_labels(self, images: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(N, H, W) uint8 argmax (on the CPU) of the dense CRF on (N, C, H, W) non-negative class scores."""
        if self.crf_runner is None:
            raise RuntimeError("no CRF runner: call init_crf or set_crf first")
        probs = scores.float() / scores.float().sum(1, keepdim=True).clamp_min(1e-5)
        return argmax(self.crf_runner.on_normalised(images, probs), 1).to(torch.uint8).cpu()

    def log_val_confusion(self, confusion: Any) -> None:
        """Log val/mIoU, val/mFPR, val/mFNR (the official metric) of an accumulated confusion matrix; reset it."""
        conf = confusion.compute().cpu().numpy().astype(np.int64)
        confusion.reset()
        scores = scores_from_confusion(conf)
        self.last_val_scores = scores  # per-class numbers for callbacks (the W&B table)
        for name, value in (("mIoU", scores.miou), ("mFPR", scores.mfpr), ("mFNR", scores.mfnr)):
            self.log(f"val/{name}", float(np.nan_to_num(value)), prog_bar=name == "mIoU", sync_dist=False)

    def teardown(self, stage: str) -> None:
        if self.crf_runner is not None:
            self.crf_runner.close()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODULE_KEY] = module_tag(self)
