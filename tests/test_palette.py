from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dhr.data.palette import make_palette
from dhr.errors import DHRError
from dhr.utils.io import read_label_png, save_label_png


def test_voc_bit_colormap_entries():
    p = make_palette("voc", 21)
    expected = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
                (128, 128, 128), (64, 0, 0)]
    assert [tuple(c) for c in p[:9]] == expected
    assert tuple(p[255]) == (224, 224, 192)
    assert tuple(p[21]) == (0, 0, 0)  # entries above C - 1 are black


def test_shifted_palette_starts_at_bit_colour_one():
    p = make_palette("shifted", 171)
    bits = make_palette("voc", 255)
    assert tuple(p[0]) == (128, 0, 0)
    assert tuple(p[170]) == tuple(bits[171])
    assert tuple(p[171]) == tuple(bits[171])  # entry C also holds bit colour C
    assert tuple(p[255]) == (224, 224, 192)


def test_ade_palette_first_entries():
    p = make_palette("ade", 150)
    assert [tuple(c) for c in p[:3]] == [(120, 120, 120), (180, 120, 120), (6, 230, 230)]
    assert tuple(p[149]) == (92, 0, 255)


def test_unknown_palette_kind():
    with pytest.raises(DHRError, match="unknown palette kind"):
        make_palette("rainbow", 3)


def test_label_png_roundtrip_is_palette_mode(tmp_path):
    label = np.random.default_rng(0).integers(0, 21, (5, 7)).astype(np.uint8)
    label[0, 0] = 255
    save_label_png(tmp_path / "x.png", label, make_palette("voc", 21))
    with Image.open(tmp_path / "x.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_label_png(tmp_path / "x.png"), label)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file


def test_corrupt_png_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DHRError, match="bad.png: cannot decode"):
        read_label_png(tmp_path / "bad.png")
