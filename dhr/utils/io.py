"""File IO that never leaves half-written files: write to a temporary sibling, then rename."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dhr.errors import DHRError


def current_umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (readers see the old file or the whole new one).

    The file gets the permissions ``open`` would give it (0666 less the umask), not the 0600 of
    the temporary file, so colleagues on shared storage can read what a run wrote.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def refuse_inside(out_dir: str | os.PathLike, inputs: dict[str, Path], key: str = "out_dir") -> None:
    """Refuse an output folder that is, or lies inside, one of the ``inputs`` (links resolved),
    whatever ``overwrite`` says: ground truth, images and features are never written over."""
    out = Path(out_dir).resolve()
    for what, folder in inputs.items():
        inside = folder.resolve()
        if out == inside or inside in out.parents:
            raise DHRError(f"{key}={out_dir} lies inside {folder} ({what}), which runs read: outputs never go "
                           f"into a dataset's image, mask, xml or feature folders; choose another {key}")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` of ``obj`` to ``path`` atomically: a killed job never leaves half a file for the next reader."""
    import torch  # here, not at the top: the evaluator and the CLIs' --help import this module

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def encode_label_png(label: np.ndarray, palette: np.ndarray) -> bytes:
    """Encode an (H, W) class-id array as an 8-bit palette PNG."""
    if label.ndim != 2:
        raise ValueError(f"label maps are 2-D, got shape {label.shape}")
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError("label values must lie in 0..255")
        label = label.astype(np.uint8)
    image = Image.fromarray(label, mode="P")
    image.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_label_png(path: str | os.PathLike, label: np.ndarray, palette: np.ndarray) -> None:
    """Write a palette PNG atomically."""
    atomic_write_bytes(path, encode_label_png(label, palette))


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG ("P" or "L" mode) as an (H, W) uint8 index array.

    RGB or multi-channel label images are rejected: their colours are not class ids.
    """
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DHRError(
                    f"{path}: label image has mode {image.mode!r}; label PNGs must be index "
                    "images (mode P or L) holding class ids. Convert colour renderings back to "
                    "indices with the dataset palette."
                )
            return np.asarray(image)
    except FileNotFoundError:
        raise DHRError(f"{path}: label file not found") from None
    except (OSError, SyntaxError) as err:  # PIL raises these for truncated or corrupt files
        raise DHRError(f"{path}: cannot decode label PNG ({err}); re-export or delete it") from None


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB (greyscale and palette images are converted), with a clear error."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DHRError(f"{path}: image file not found") from None
    except (OSError, SyntaxError) as err:
        raise DHRError(f"{path}: cannot decode image ({err}); re-download or delete it") from None
