"""Atomic writes: readers never see half a file, and files get the umask's permissions, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from dhr.utils.io import atomic_write_bytes, atomic_write_json, read_label_png, save_label_png


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"abc")
        atomic_write_json(tmp_path / "b.json", {"x": 1})
        save_label_png(tmp_path / "c.png", np.zeros((4, 4), np.uint8), np.zeros((256, 3), np.uint8))
    finally:
        os.umask(old)
    for name in ("a.bin", "b.json", "c.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert read_label_png(tmp_path / "c.png").shape == (4, 4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.bin"
    atomic_write_bytes(target, b"old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keep.bin"]
