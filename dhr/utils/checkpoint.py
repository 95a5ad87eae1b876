"""Reading checkpoints, in one place: dhr's Lightning ``.ckpt`` files and foreign weight files.

Every dhr module writes its class path under ``dhr_module`` and the EMA callback its weights
under ``ema_state_dict``; :func:`load_module` rebuilds the module from the hyper-parameters
alone. Everything is read with ``weights_only=True`` (no code runs from a file), and every
failure is a :class:`~dhr.errors.DHRError` that names the file, the config key and the fix.
"""

from __future__ import annotations

import importlib
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dhr.errors import DHRError

log = logging.getLogger(__name__)
EMA_KEY = "ema_state_dict"
MODULE_KEY = "dhr_module"
_READ_ERRORS = (RuntimeError, EOFError, ValueError, TypeError, KeyError, OSError, pickle.UnpicklingError)


def module_tag(module: object) -> str:
    """The class path written into a checkpoint, e.g. ``dhr.modules.dhr.DHRModule``."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def load_problem(err: BaseException) -> str:
    """What a failed ``torch.load(weights_only=True)`` means, in a few words (not PyTorch's advice)."""
    text = str(err)
    if "Unsupported global" in text:
        return "it stores Python objects, not tensors"
    if "weights_only" in text or "PytorchStreamReader" in text or isinstance(err, EOFError):
        return "the file is truncated or not a PyTorch file"
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def read_checkpoint(path: str | Path, key: str = "ckpt") -> dict[str, Any]:
    """The dict stored in ``path`` (on the CPU); ``key`` is the config key that named the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DHRError(f"{key}={path}: checkpoint not found; pass a .ckpt written by dhr.train")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _READ_ERRORS as err:
        raise DHRError(f"{key}={path}: not a readable checkpoint ({load_problem(err)}); pass a file written by "
                       "dhr.train or a plain state dict") from None
    if not isinstance(state, Mapping):
        raise DHRError(f"{key}={path}: holds a {type(state).__name__}, not a checkpoint dict")
    return dict(state)


def check_resumable(path: str | Path, module: Any, key: str = "ckpt_path") -> None:
    """Refuse, before training starts, a file Lightning cannot resume this module from: not a
    Lightning checkpoint, or weights of another model or class count (the tensor is named)."""
    state = read_checkpoint(path, key)
    if "state_dict" not in state or "pytorch-lightning_version" not in state:
        raise DHRError(f"{key}={path}: not a checkpoint written by dhr.train (no state_dict / Lightning version); "
                       "resume from <run>/checkpoints/last.ckpt, or start from weights with backbone.weights=PATH")
    ours = module.state_dict()
    theirs = state["state_dict"]
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    mismatched = [(k, tuple(theirs[k].shape), tuple(ours[k].shape)) for k in sorted(set(ours) & set(theirs))
                  if hasattr(theirs[k], "shape") and tuple(theirs[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or mismatched:
        if mismatched:
            name, got, want = mismatched[0]
            what = f"{len(mismatched)} tensors differ in shape, e.g. {name}: {got} in the file, {want} in this model"
        else:
            what = f"{len(missing)} tensors missing, {len(unexpected)} unexpected (e.g. {(missing or unexpected)[0]})"
        raise DHRError(f"{key}={path}: this checkpoint is of another model or dataset ({what}); resume it with the "
                       "config it was trained with (its run's .hydra/config.yaml)")


def model_weights(state: Mapping[str, Any], path: str | Path, prefer_ema: bool = True) -> dict[str, Any]:
    """The EMA weights when present (``prefer_ema``), else the online ``state_dict``."""
    if prefer_ema and EMA_KEY in state:
        return dict(state[EMA_KEY])
    if "state_dict" not in state:
        raise DHRError(f"{path}: no state_dict in this file; it is not a Lightning checkpoint of dhr.train")
    if prefer_ema:
        log.warning("%s has no EMA weights; using the online weights", path)
    return dict(state["state_dict"])


def module_class(tag: str, path: str | Path) -> type:
    """The LightningModule class a checkpoint names; only dhr's own modules are imported."""
    module_name, _, name = str(tag).rpartition(".")
    if not module_name.startswith("dhr.modules."):
        raise DHRError(f"{path}: names module class {tag!r}, which is not one of dhr's")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise DHRError(f"{path}: module class {tag!r} does not exist in this dhr version") from None


def upgraded(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters of a checkpoint written before a setting existed, with the value it had then:
    DeepLabv3+'s ``decoder_channels`` was fixed at 256."""
    if "aspp_channels" in hparams and "decoder_channels" not in hparams:
        return {**hparams, "decoder_channels": 256}
    return hparams


def without_weight_files(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters that rebuild the module without reading its initial weights (the checkpoint has them).

    A checkpoint must load on a machine without the backbone's weight file, cache or network.
    """
    out = dict(hparams)
    backbone = out.get("backbone")
    if isinstance(backbone, Mapping):
        out["backbone"] = {**backbone, **{k: None for k in ("weights", "weights_package") if k in backbone},
                           **({"pretrained": False} if "pretrained" in backbone else {})}
    if out.get("init_from"):
        out["init_from"] = None
    return out


def load_module(path: str | Path, key: str = "ckpt", num_classes: int | None = None,
                dataset: str | None = None, prefer_ema: bool = True, state: Mapping[str, Any] | None = None) -> Any:
    """The module of a dhr checkpoint with its (EMA) weights, in eval mode.

    ``num_classes`` (of ``dataset``) is checked against the checkpoint's before any weight loads.
    """
    state = read_checkpoint(path, key) if state is None else state  # ``state``: the file already read
    if MODULE_KEY not in state or "hyper_parameters" not in state:
        raise DHRError(f"{key}={path}: not a dhr.train checkpoint (no {MODULE_KEY} / hyper_parameters)")
    hparams = upgraded(dict(state["hyper_parameters"]))
    if num_classes is not None and int(hparams.get("num_classes", num_classes)) != int(num_classes):
        raise DHRError(f"{key}={path}: the checkpoint predicts {hparams['num_classes']} classes but dataset "
                       f"{dataset or ''} has {num_classes}; pick the matching dataset=...")
    cls = module_class(state[MODULE_KEY], path)
    try:
        module = cls(**without_weight_files(hparams))
        module.load_state_dict(model_weights(state, path, prefer_ema))
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        raise DHRError(f"{key}={path}: does not rebuild with this dhr version ({str(err).splitlines()[0]})") from None
    return module.eval()
