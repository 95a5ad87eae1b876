"""What every dhr LightningModule shares: a class tag in its checkpoints and one CRF pool.

The tag (``dhr_module``) lets ``dhr.predict`` and ``dhr.features`` rebuild any module from its
hyper-parameters alone. Modules that run dense CRFs take the ``crf`` config node as a plain dict
and run every CRF through one :class:`~dhr.ops.crf.CRFPool`; ``dhr.predict`` swaps in the
``crf`` node of its own command line with :meth:`DHRLightningModule.set_crf`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from dhr.ops.crf import CRFParams, CRFPool
from dhr.utils.checkpoint import MODULE_KEY, module_tag


class DHRLightningModule(pl.LightningModule):
    crf_pool: CRFPool | None = None

    def init_crf(self, crf: Mapping[str, Any]) -> None:
        self.crf_pool = CRFPool(CRFParams.from_cfg(crf))

    def set_crf(self, params: CRFParams) -> None:
        """Run later CRFs with ``params`` (``dhr.predict crf.*=...``)."""
        if self.crf_pool is not None:
            self.crf_pool.close()
        self.crf_pool = CRFPool(params)

    def teardown(self, stage: str) -> None:
        if self.crf_pool is not None:
            self.crf_pool.close()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[MODULE_KEY] = module_tag(self)
