"""Build callbacks and loggers from config groups whose entries each have a ``_target_``."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a group node (entries without ``_target_`` are skipped)."""
    from hydra.utils import instantiate

    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if isinstance(node, DictConfig) and "_target_" in node]
