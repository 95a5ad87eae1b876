"""USS features follow the crop's geometry (dhr-method.md §5.1): identity, and alignment through
resize, flip, crop and pad checked against the real transforms applied to coordinate masks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from dhr.data.transforms import Geometry, train_transform
from dhr.data.uss import feature_grid, load_uss, uss_on_grid, working_grid
from dhr.errors import DHRError


def test_identity_for_a_canvas_sized_image_at_scale_one():
    s, patch = 512, 14
    g = working_grid(s, patch)
    assert g == 74 and feature_grid(s, s, patch) == (g, g)
    feat = torch.randn(90, g, g)
    out, valid = uss_on_grid(feat, Geometry(orig_hw=(s, s)), g)
    assert valid.all()
    torch.testing.assert_close(out, feat, atol=1e-4, rtol=0)  # float32 grid coordinates


def coordinate_features(h: int, w: int, patch: int) -> torch.Tensor:
    """A stored map whose two channels are the original-image (y, x) of each token centre."""
    hf, wf = feature_grid(h, w, patch)
    ys = (torch.arange(hf, dtype=torch.float64) + 0.5) * h / hf
    xs = (torch.arange(wf, dtype=torch.float64) + 0.5) * w / wf
    return torch.stack(torch.broadcast_tensors(ys[:, None], xs[None, :])).float()


@pytest.mark.parametrize("seed", range(6))
def test_alignment_through_resize_flip_crop_and_pad(seed):
    random.seed(seed)
    h, w, s, patch = 120, 200, 96, 8
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    sample = {"image": Image.new("RGB", (w, h)), "geometry": Geometry(orig_hw=(h, w)),
              "masks": {"y": Image.fromarray(yy.astype(np.uint8)), "x": Image.fromarray(xx.astype(np.uint8))}}
    out = train_transform(crop_size=s, resize_long=(80, 260), jitter=None)(sample)
    geo = sample["geometry"]
    g = working_grid(s, patch)
    feats, valid = uss_on_grid(coordinate_features(h, w, patch), geo, g)
    assert valid.any()
    # the pixel under each valid cell centre, through the real mask transforms (nearest): same place
    centre = ((torch.arange(g) + 0.5) * s / g).long()
    y_mask = torch.from_numpy(out["masks"]["y"].astype(np.int64))[centre][:, centre]
    x_mask = torch.from_numpy(out["masks"]["x"].astype(np.int64))[centre][:, centre]
    scale = max(h / geo.resized_hw[0], w / geo.resized_hw[1])
    tol = 1.0 + scale  # nearest resampling and token-grid bilinear: within about one source pixel
    dy = (feats[0] - (y_mask + 0.5))[valid].abs().max()
    dx = (feats[1] - (x_mask + 0.5))[valid].abs().max()
    assert dy <= tol and dx <= tol, (float(dy), float(dx), geo)
    # invalid cells are exactly those on padding
    inside = torch.zeros(s, s, dtype=torch.bool)
    y0, x0, y1, x1 = geo.crop_box
    inside[y0:y1, x0:x1] = True
    assert torch.equal(valid, inside[centre][:, centre])


def test_bad_feature_files_name_the_file(tmp_path):
    with pytest.raises(DHRError, match="not found"):
        load_uss(tmp_path / "a.pt", (100, 100), 8)
    torch.save(torch.zeros(6, 3, 3), tmp_path / "b.pt")
    with pytest.raises(DHRError, match=r"b\.pt.*needs"):
        load_uss(tmp_path / "b.pt", (100, 100), 8)
    (tmp_path / "c.pt").write_bytes(b"junk")
    with pytest.raises(DHRError, match="cannot read"):
        load_uss(tmp_path / "c.pt", (100, 100), 8)
