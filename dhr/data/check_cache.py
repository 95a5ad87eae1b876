"""A record of data folders that passed the full check (``data.validate=full``), keyed by every
file's name, size and modification time: a second run on unchanged data skips the decode.

Markers live in ``$DHR_CACHE_DIR`` (default ``~/.cache/dhr``)/``checked``, never in the dataset.
Only clean checks are remembered; a folder with problems is checked again every time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = os.environ.get("DHR_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dhr"
    return Path(root) / "checked"


def fingerprint(paths: Sequence[Path | None], options: Mapping[str, Any]) -> str:
    """SHA-256 over ``options`` and (name, size, mtime) of every file in ``paths`` (folders or files)."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for path in paths:
        if path is None or not path.exists():
            digest.update(f"{path}: absent\n".encode())
            continue
        entries = sorted(os.scandir(path), key=lambda e: e.name) if path.is_dir() else [path]
        for entry in entries:
            st = entry.stat()
            name = entry.name if isinstance(entry, os.DirEntry) else str(entry)
            digest.update(f"{path}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def already_passed(key: str) -> bool:
    return (cache_dir() / key).is_file()


def remember_passed(key: str) -> None:
    """Best effort: a read-only home only means the next run checks again."""
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / key).write_text("passed\n")
    except OSError as err:
        log.debug("could not record the data check in %s (%s)", cache_dir(), err)
