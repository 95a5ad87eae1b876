"""logger=wandb offline: one run per job with its group and job type, the resolved config, the
per-class table and images with masks (validation: GT and prediction; DHR: seed and DHR mask)."""

from __future__ import annotations

import json

import pytest
from conftest import compose_cfg, dhr_overrides

pytestmark = pytest.mark.slow


def test_an_offline_dhr_run_holds_the_table_the_masks_and_the_config(tmp_path, synth_root, dhr_inputs, monkeypatch):
    from dhr.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("DHR_WANDB_GROUP", "pipeline-test")
    seeds, _ = dhr_inputs
    overrides = [*dhr_overrides(synth_root, seeds), "logger=wandb", "evaluate_after_fit=false", "trainer.limit_val_batches=1"]
    cfg = compose_cfg("train", overrides, tmp_path / "run")
    assert cfg.logger.wandb.group == "pipeline-test" and cfg.logger.wandb.job_type == "train"
    run(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    tables = list((files / "media" / "table").rglob("*.table.json"))
    assert tables, "no per-class table"
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["class", "IoU", "FPR", "FNR"] and len(table["data"]) == 9
    assert [row[0] for row in table["data"]][:2] == ["background", "warm_stripes"]
    images = list((files / "media" / "images" / "val").glob("*.png"))
    masks = list((files / "media" / "images" / "mask" / "val").glob("*.mask.png"))
    assert len(images) == 4 and len(masks) == 8  # 4 validation images, each with GT and prediction masks
    assert len(list((files / "media" / "images" / "mask" / "train").glob("*.mask.png"))) == 2  # seed, DHR mask
    record = next(runs[0].glob("run-*.wandb")).read_bytes()  # offline: the run's record (config, group, job type)
    for needle in (b"bilateral_sxy", b"uss_name", b"pipeline-test", b'job_type":"train'):
        assert needle in record, needle  # the resolved config, not only the hparams
