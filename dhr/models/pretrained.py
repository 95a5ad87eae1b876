"""``backbone.pretrained=true``: the official weights of a backbone by timm name and tag, from the cache.

Each backbone config names its tag (``pretrained_tag``: ``tv_in1k`` for the torchvision ResNets
the release uses, ``dino`` for DINO ViT-S/8 and B/8, ``lvd142m`` for DINOv2, ``ms_in22k`` for
Swin-L). The file is looked up in the Hugging Face cache (where timm keeps its weights); when it
is missing, it is downloaded if the Hub can be reached. Offline (``HF_HUB_OFFLINE=1``, or the Hub
unreachable within a few seconds) and uncached, the run stops at once with the file, the download
command and the ``backbone.weights=PATH`` alternative. The resolved file then loads exactly like
``backbone.weights=PATH``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dhr.errors import DHRError

HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's Hub repositories hold, in timm's order
PROBE_SECONDS = 3.0


def resolve_pretrained(cfg: dict[str, Any]) -> dict[str, Any]:
    """A backbone node without ``pretrained``/``pretrained_tag``; with ``pretrained`` its ``weights`` is the cached file."""
    cfg = dict(cfg)
    pretrained = bool(cfg.pop("pretrained", False))
    tag = cfg.pop("pretrained_tag", None)
    if pretrained and not cfg.get("weights"):
        cfg["weights"] = str(pretrained_file(str(cfg["name"]), tag))
    return cfg


def hub_is_offline() -> bool:
    """``HF_HUB_OFFLINE`` set, or the Hub's host not answering within :data:`PROBE_SECONDS`."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=PROBE_SECONDS).close()
    except OSError:
        return True
    return False


def pretrained_file(name: str, tag: str | None) -> Path:
    """The local file of timm's ``{name}.{tag}`` weights (cached, or downloaded when online)."""
    from timm.models import get_pretrained_cfg

    if not tag:
        raise DHRError(f"backbone.pretrained=true: backbone {name} has no official weights (backbone.pretrained_tag is "
                       "null); give a local file with backbone.weights=PATH")
    full = f"{name}.{tag}"
    try:
        cfg = get_pretrained_cfg(full)
    except RuntimeError:  # an unknown tag of a known architecture
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        raise DHRError(f"backbone.pretrained_tag={tag}: timm has no Hub weights {full!r}; check the tag "
                       f"(timm.list_pretrained('{name}*')) or give backbone.weights=PATH")
    repo = cfg.hf_hub_id.split("@")[0]
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in files:
        hit = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(hit, str):
            return Path(hit)
    fix = (f"download it on a machine with internet (huggingface-cli download {repo} {files[0]}, or "
           f"python -c \"import timm; timm.create_model('{full}', pretrained=True)\") into the cache "
           f"{constants.HF_HUB_CACHE} (HF_HOME / HF_HUB_CACHE), or give the file with backbone.weights=PATH"
           + (f" (the original file: {cfg.url})" if cfg.url else ""))
    if hub_is_offline():
        raise DHRError(f"backbone.pretrained=true: {repo}/{files[0]} is not in the Hugging Face cache and the Hub "
                       f"cannot be reached (offline); {fix}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, files[0], cache_dir=constants.HF_HUB_CACHE))
    except Exception as err:  # noqa: BLE001 - any download failure is the same user problem
        raise DHRError(f"backbone.pretrained=true: downloading {repo}/{files[0]} failed ({str(err).splitlines()[0]}); {fix}") from None
