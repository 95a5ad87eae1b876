"""USS (CAUSE) feature maps aligned with each training crop (``dhr-method.md`` §5.1, §10 #1).

A stored map (D, h_f, w_f) covers the whole original image. For every cell centre of the
g x g working grid over the S x S canvas we undo the crop/paste offset, the horizontal flip and
the resize, and sample the map bilinearly there (pixel-centre convention, align_corners=False,
border clamping). Cells whose centre lies outside the crop box are marked invalid, so batches
stack and the relabelling ignores them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from dhr.data.transforms import Geometry
from dhr.errors import DHRError
from dhr.utils.grid import ceil_to, feature_grid, working_grid  # noqa: F401 - part of this API

MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def load_uss(path: Path, orig_hw: tuple[int, int], patch: int, dim: int | None = None) -> torch.Tensor:
    """One stored map (D, h_f, w_f), checked against the image it belongs to."""
    try:
        feat = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DHRError(f"{path}: USS feature file not found; export it with "
                       "`python -m dhr.features ckpt=<CAUSE ckpt> split=<split>`") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        from dhr.utils.checkpoint import load_problem

        raise DHRError(f"{path}: cannot read the USS features ({load_problem(err)}); delete it and re-export "
                       "with `python -m dhr.features`") from None
    if not isinstance(feat, torch.Tensor) or feat.ndim != 3:
        raise DHRError(f"{path}: expected a (D, h, w) tensor, found {getattr(feat, 'shape', type(feat))}")
    expected = feature_grid(*orig_hw, patch)
    if tuple(feat.shape[1:]) != expected or (dim is not None and feat.shape[0] != dim):
        raise DHRError(f"{path}: USS features are {tuple(feat.shape)} but an image of {orig_hw[0]}x{orig_hw[1]} needs "
                       f"({dim if dim is not None else 'D'}, {expected[0]}, {expected[1]}) for patch {patch}; re-export "
                       "with `python -m dhr.features overwrite=true` or set model.dhr.uss_patch to the exporter's patch")
    return feat


def cell_sources(geometry: Geometry, g: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Original-image coordinates (y, x) of every cell centre (float64, (g,) each) and the validity (g, g)."""
    canvas_h, canvas_w = geometry.canvas_hw
    dy, dx, dy1, dx1 = geometry.crop_box
    sy, sx, _, _ = geometry.src_box
    res_h, res_w = geometry.resized_hw
    orig_h, orig_w = geometry.orig_hw
    cy = (torch.arange(g, dtype=torch.float64) + 0.5) * canvas_h / g
    cx = (torch.arange(g, dtype=torch.float64) + 0.5) * canvas_w / g
    valid = ((cy >= dy) & (cy < dy1))[:, None] & ((cx >= dx) & (cx < dx1))[None, :]
    ry, rx = cy - dy + sy, cx - dx + sx  # continuous coordinates in the resized (flipped) image
    if geometry.flipped:
        rx = res_w - rx
    return ry * orig_h / res_h, rx * orig_w / res_w, valid


def uss_on_grid(feat: torch.Tensor, geometry: Geometry, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored map sampled at the crop's cell centres: (D, g, g) float32 and validity (g, g)."""
    oy, ox, valid = cell_sources(geometry, g)
    orig_h, orig_w = geometry.orig_hw
    ny, nx = (oy / orig_h * 2 - 1).float(), (ox / orig_w * 2 - 1).float()
    grid = torch.stack(torch.broadcast_tensors(nx[None, :], ny[:, None]), dim=-1)[None]
    out = F.grid_sample(feat[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return out, valid
