"""Key maps from the official releases' checkpoints onto dhr's modules (read from the official
module structure of ``shjo-april/DHR`` ``core/networks.py`` / ``core/layers.py``; no code copied).

The official DHR ``last.pth`` is a plain state dict of ``DeepLabv3plus_with_DHR`` (its EMA
weights): ``model.*`` the torchvision-named ResNet, ``seg_decoder.*`` the DeepLabv3+ head whose
blocks are ``conv``/``bn`` pairs, and ``classifier.weight`` the CAM head. The release drops the
CAM head for inference (a non-strict load); here it is dropped or kept by choice and every other
key must match: strict, with a report of missing and unexpected keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from dhr.errors import DHRError

_BLOCK = {"conv": 0, "bn": 1}
DHR_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^model\.(.+)$"), lambda m: f"net.backbone.{m[1]}"),
    (re.compile(r"^seg_decoder\.aspp\.aspp([1-4])\.(conv|bn)\.(.+)$"),
     lambda m: f"net.head.aspp.branches.{int(m[1]) - 1}.{_BLOCK[m[2]]}.{m[3]}"),
    (re.compile(r"^seg_decoder\.aspp\.gap\.1\.(conv|bn)\.(.+)$"), lambda m: f"net.head.aspp.pool.1.{_BLOCK[m[1]]}.{m[2]}"),
    (re.compile(r"^seg_decoder\.aspp\.block\.(conv|bn)\.(.+)$"), lambda m: f"net.head.aspp.project.0.{_BLOCK[m[1]]}.{m[2]}"),
    (re.compile(r"^seg_decoder\.low_block\.(conv|bn)\.(.+)$"), lambda m: f"net.head.low_level.{_BLOCK[m[1]]}.{m[2]}"),
    (re.compile(r"^seg_decoder\.mid_block\.([01])\.(conv|bn)\.(.+)$"),  # our decoder.1 / decoder.3 are the dropouts
     lambda m: f"net.head.decoder.{2 * int(m[1])}.{_BLOCK[m[2]]}.{m[3]}"),
    (re.compile(r"^seg_decoder\.classifier\.(.+)$"), lambda m: f"net.head.classifier.{m[1]}"),
    (re.compile(r"^classifier\.(.+)$"), lambda m: f"cam_head.{m[1]}"),
]
CAM_KEY = "classifier.weight"


def unwrap_state_dict(obj: Any, origin: str) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` from a saved object: wrappers (``state_dict``/``model``/``ema``) and ``module.`` removed."""
    for key in ("ema_state_dict", "state_dict", "model", "ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise DHRError(f"{origin}: holds no state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DHRError(f"{origin}: entries {bad[:3]} are not tensors; not a state dict")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def is_official_dhr(state: Mapping[str, Any]) -> bool:
    """The official DeepLabv3+ layout (``seg_decoder.classifier.weight`` beside ``model.conv1.weight``)."""
    return {"seg_decoder.classifier.weight", "model.conv1.weight"} <= set(state)


def map_official_dhr(state: Mapping[str, torch.Tensor], *, keep_cam: bool, origin: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(dhr names -> the very same tensors, the official keys dropped by choice). Unknown keys are an error."""
    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if key == CAM_KEY and not keep_cam:
            dropped.append(key)
            continue
        for pattern, target in DHR_RULES:
            match = pattern.match(key)
            if match:
                mapped[target(match)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise DHRError(f"{origin}: {len(unknown)} key(s) are not in the official DeepLabv3+ layout, e.g. {unknown[:5]}; "
                       "is this the DHR release's last.pth?")
    return mapped, dropped


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """``load_state_dict`` that names every missing and unexpected key and every shape that does not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise DHRError(f"{origin}: does not fit {type(module).__name__} (missing {len(missing)}: {missing[:4]}; "
                       f"unexpected {len(unexpected)}: {unexpected[:4]}; shape mismatches {len(shapes)}: {shapes[:3]}); "
                       "check the dataset (class count) and backbone of the checkpoint")
    module.load_state_dict(dict(state), strict=True)


def official_cause(obj: Any, origin: str, codebook: torch.Tensor | None = None) -> dict[str, Any]:
    """The DHR-format CAUSE checkpoint ``{decoder, codebook}`` from either official layout.

    ``CAUSE_{DATA}.pt`` (DHR's) already is it; the CAUSE repository's ``segment_tr.pth`` holds the
    whole segment module, of which DHR keeps ``head_ema.*``, with the codebook (``modular.npy``) beside it.
    """
    if isinstance(obj, Mapping) and "decoder" in obj:
        decoder = unwrap_state_dict(obj["decoder"], f"{origin} (decoder)")
        book = obj.get("codebook") if codebook is None else codebook
    else:
        decoder = {k: v for k, v in unwrap_state_dict(obj, origin).items() if k.startswith("head_ema.")}
        book = codebook
    if book is None:
        raise DHRError(f"{origin}: no codebook; pass the CAUSE repository's modular.npy with codebook=PATH")
    book = torch.as_tensor(book)
    if not any(k.startswith("head_ema.") for k in decoder) or "head_ema.query_pos" not in decoder:
        raise DHRError(f"{origin}: no head_ema.* TR head (head_ema.query_pos missing); export the TR head of CAUSE")
    if book.ndim != 2 or book.shape[1] != decoder["head_ema.query_pos"].shape[1]:
        raise DHRError(f"{origin}: codebook {tuple(book.shape)} does not fit the head's "
                       f"{decoder['head_ema.query_pos'].shape[1]}-d tokens")
    return {"decoder": decoder, "codebook": book}
