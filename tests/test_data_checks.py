"""Data checked before training as dhr.doctor does: corrupt images in train and in val and a corrupt
feature file are all reported in one error before the first step; a clean check is cached by size
and mtime; data.on_error=skip leaves broken files out; a file that breaks at run time is named."""

from __future__ import annotations

import logging
import shutil

import pytest
from conftest import cli, compose_cfg, dhr_overrides, tiny_train_overrides
from hydra.utils import instantiate

from dhr.errors import DHRError


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def broken(tmp_path, synth_root, dhr_inputs):
    """A copy of the tiny set with a truncated train JPEG, a truncated val JPEG and a corrupt feature file."""
    seeds, _ = dhr_inputs
    root, seed_copy = tmp_path / "data", tmp_path / "seeds"
    shutil.copytree(synth_root, root)
    shutil.copytree(seeds, seed_copy)
    truncate(root / "SYNTH" / "train" / "image" / "tr_00003.jpg")
    truncate(root / "SYNTH" / "validation" / "image" / "va_00001.jpg")
    (root / "SYNTH" / "train" / "CAUSE_TEST" / "tr_00005.pt").write_bytes(b"not a tensor")
    return root, seed_copy


def test_every_broken_file_of_train_and_val_is_reported_before_the_first_step(tmp_path, broken):
    from dhr.train import run

    root, seeds = broken
    with pytest.raises(DHRError) as err:
        run(compose_cfg("train", dhr_overrides(root, seeds), tmp_path / "run"))
    text = str(err.value)
    assert "3 problem(s)" in text and "found before training" in text and "data.on_error=skip" in text
    assert "tr_00003.jpg: cannot decode image" in text and "va_00001.jpg: cannot decode image" in text
    assert "tr_00005.pt: cannot read the USS features" in text
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_skip_leaves_the_broken_files_out_and_says_so(tmp_path, synth_root, dhr_inputs, broken, caplog):
    def datamodule(root, seeds, *extra):
        dm = instantiate(compose_cfg("train", [*dhr_overrides(root, seeds), *extra], tmp_path / "run").data)
        dm.setup("fit")
        return dm

    clean = datamodule(synth_root, dhr_inputs[0])
    with caplog.at_level(logging.WARNING, logger="dhr.data.datamodule"):
        skipped = datamodule(*broken, "data.on_error=skip")
    assert "leaving out 3 image(s) with problems" in caplog.text
    assert {"tr_00003", "tr_00005"}.isdisjoint(skipped.data_train.ids)
    assert len(skipped.data_train) == len(clean.data_train) - 2
    assert "va_00001" not in skipped.data_val.ids and len(skipped.data_val) == len(clean.data_val) - 1


def test_a_clean_check_is_remembered_until_a_file_changes(tmp_path, synth_root, monkeypatch):
    import dhr.data.doctor as doctor

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    calls = []
    real = doctor.check_split
    monkeypatch.setattr(doctor, "check_split", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    overrides = tiny_train_overrides(root)

    def setup() -> None:
        datamodule = instantiate(compose_cfg("train", overrides, tmp_path / "run").data)
        datamodule.setup("fit")

    setup()
    assert calls == ["train", "validation"]
    setup()
    assert calls == ["train", "validation"]  # nothing changed: not decoded again
    truncate(root / "SYNTH" / "validation" / "image" / "va_00002.jpg")
    with pytest.raises(DHRError, match="va_00002.jpg: cannot decode image"):
        setup()
    assert calls == ["train", "validation", "validation"]  # only the changed split


def test_a_file_that_breaks_at_run_time_is_named_in_one_line_not_a_worker_traceback(tmp_path, synth_root):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    truncate(root / "SYNTH" / "train" / "image" / "tr_00004.jpg")
    overrides = [o for o in tiny_train_overrides(root) if o != "recipe.num_workers=0"]
    res = cli("dhr.train", *overrides, "recipe.num_workers=1", "data.validate=off", "trainer.limit_train_batches=6",
              f"hydra.run.dir={tmp_path / 'run'}")  # the image is decoded in a DataLoader worker process
    assert res.rc == 2, res.tail()
    error = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "tr_00004.jpg: cannot decode image" in error[0]
    assert "Traceback" not in res.stderr and "DataLoader worker" not in res.stderr


def test_skip_at_run_time_serves_the_next_item(tmp_path, synth_root, caplog):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    truncate(root / "SYNTH" / "train" / "image" / "tr_00000.jpg")
    overrides = [o for o in tiny_train_overrides(root) if not o.startswith("model.")] + ["model=cam"]
    cfg = compose_cfg("train", [*overrides, "data.validate=off", "data.on_error=skip"], tmp_path / "run")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    index = datamodule.data_train.ids.index("tr_00000")
    with caplog.at_level(logging.WARNING, logger="dhr.data.datasets"):
        item = datamodule.data_train[index]
    assert item["id"] == datamodule.data_train.ids[index + 1] and "tr_00000.jpg: cannot decode image" in caplog.text
