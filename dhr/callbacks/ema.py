"""Exponential moving average of the weights (``dhr-method.md`` §8).

Starts as a copy of the initial model, decays every floating-point state entry (parameters and
BN statistics) by ``decay`` after each optimiser step and leaves integer buffers at their initial
values. Validation runs on the EMA weights; checkpoints carry them as ``ema_state_dict``, which
``dhr.predict`` loads. Runs on every DDP rank: weights are identical after the all-reduce.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from dhr.utils.checkpoint import EMA_KEY


class EMA(Callback):
    def __init__(self, decay: float = 0.999, validate_with_ema: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.validate_with_ema = validate_with_ema
        self.ema: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None
        self._float_keys: list[str] = []

    @property
    def state_key(self) -> str:
        return "EMA"

    def _init(self, pl_module: pl.LightningModule) -> None:
        state = pl_module.state_dict()
        if self.ema is None:
            self.ema = {k: v.detach().clone() for k, v in state.items()}
        else:  # restored from a checkpoint: move to the module's device
            self.ema = {k: v.to(state[k].device) for k, v in self.ema.items()}
        self._float_keys = [k for k, v in state.items() if v.dtype.is_floating_point]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._init(pl_module)

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        assert self.ema is not None
        state = pl_module.state_dict()
        ema = [self.ema[k] for k in self._float_keys]
        cur = [state[k].detach() for k in self._float_keys]
        torch._foreach_lerp_(ema, cur, 1.0 - self.decay)

    def _swap_in(self, pl_module: pl.LightningModule) -> None:
        if self.ema is None or not self.validate_with_ema:
            return
        self._backup = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        pl_module.load_state_dict(self.ema)

    def _swap_out(self, pl_module: pl.LightningModule) -> None:
        if self._backup is not None:
            pl_module.load_state_dict(self._backup)
            self._backup = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._swap_in(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint[EMA_KEY] = {k: v.detach().cpu() for k, v in self.ema.items()}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if EMA_KEY in checkpoint:
            self.ema = {k: v.clone() for k, v in checkpoint[EMA_KEY].items()}

    def copy_to(self, pl_module: pl.LightningModule) -> None:
        """Load the EMA weights into ``pl_module`` for good (after training)."""
        if self.ema is not None:
            pl_module.load_state_dict(self.ema)
