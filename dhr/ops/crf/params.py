"""The ``crf`` config node as one validated dataclass, and the choice of backend."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dhr.errors import DHRError
from dhr.utils.config import conf_node, from_mapping, merge

DENORM_MODES = ("truncate", "round")
BACKENDS = ("auto", "torch", "pydensecrf")
INSTALL_PYDENSECRF = "pip install -e '.[crf]' (pydensecrf2, built with a C++ compiler)"


def pydensecrf_installed() -> bool:
    return importlib.util.find_spec("pydensecrf") is not None


@dataclass(frozen=True)
class CRFParams:
    """The ``crf`` config node (``conf/crf/default.yaml``); ``processes`` None = all cores."""

    iterations: int
    gauss_sxy: float
    gauss_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float
    clip: float
    denorm: str
    backend: str
    chunk: int | str
    processes: int | str | None

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise DHRError(f"crf.iterations={self.iterations!r}: use a whole number >= 1")
        for key in ("gauss_sxy", "gauss_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not value > 0:
                raise DHRError(f"crf.{key}={value!r}: use a positive number")
        if not isinstance(self.clip, (int, float)) or not 0 < self.clip < 1:
            raise DHRError(f"crf.clip={self.clip!r}: use a probability floor in (0, 1)")
        if self.denorm not in DENORM_MODES:
            raise DHRError(f"crf.denorm={self.denorm!r}: use truncate (the release) or round")
        if self.backend not in BACKENDS:
            raise DHRError(f"crf.backend={self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.backend == "pydensecrf" and not pydensecrf_installed():
            raise DHRError(f"crf.backend=pydensecrf but pydensecrf is not installed: {INSTALL_PYDENSECRF}, "
                           "or use crf.backend=torch (the same CRF in PyTorch)")
        if self.chunk != "auto" and (not isinstance(self.chunk, int) or self.chunk < 1):
            raise DHRError(f"crf.chunk={self.chunk!r}: use auto or a whole number >= 1 (crops per batched torch CRF)")
        processes = None if self.processes in (None, "auto") else self.processes
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise DHRError(f"crf.processes={self.processes!r}: use auto or a whole number >= 1")
        object.__setattr__(self, "processes", processes)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> CRFParams:
        """Keys added since a checkpoint was written (``backend``, ``chunk``) take today's defaults."""
        return from_mapping(cls, merge(conf_node("crf/default.yaml"), cfg), "crf")

    @classmethod
    def defaults(cls, **overrides: Any) -> CRFParams:
        """``conf/crf/default.yaml`` with ``overrides``: for code that runs outside Hydra."""
        return cls.from_cfg(overrides)

    def chunk_for(self, device: torch.device) -> int:
        """``auto``: one crop at a time on the CPU (batching there only adds memory traffic: docs/crf.md),
        16 on an accelerator."""
        if self.chunk != "auto":
            return int(self.chunk)
        return 1 if device.type == "cpu" else 16

    def backend_for(self, device: torch.device) -> str:
        """``auto``: torch on an accelerator, pydensecrf on the CPU when it is installed, else torch."""
        if self.backend != "auto":
            return self.backend
        if device.type != "cpu" or not pydensecrf_installed():
            return "torch"
        return "pydensecrf"
