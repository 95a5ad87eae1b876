"""dhr.pipeline on the tiny synthetic set: stages, caching by config hash, from/to/only/force, a failed
stage resumed, the report.json schema, the figures, and plain progress lines in a log."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import TINY_SYNTH, compose_cfg, tiny_train_overrides

from dhr.pipeline import READS, STAGES, split_argv

TINY_CAUSE = ["experiment=synthetic_cause", "model.eval_crf=false", "backbone.embed_dim=16", "backbone.depth=1",
              "model.num_concepts=16", "model.reduced_dim=8", "model.projection_dim=16", "model.ffn_dim=16",
              "model.resolution=64", "model.bank_length=4", "data.batch_size=4", "data.num_workers=0",
              "model.report_kmeans_seeds=1", "stage_epochs={clusterbook:1,head:1,probe:1}"]


def pipeline_cfg(tmp_path, synth_root, *extra: str):
    gen = ",".join(f"{k}:{v}" for k, v in TINY_SYNTH.items())
    routed = [o for o in tiny_train_overrides(synth_root) if not o.startswith(("paths.", "dataset."))]
    quoted = ",".join(json.dumps(o) for o in routed)
    overrides = [f"paths.data_root={synth_root}", f"dataset.generate={{{gen}}}", f"pipeline.extra=[{quoted}]",
                 "pipeline.overrides.uss=[" + ",".join(json.dumps(o) for o in TINY_CAUSE) + "]", "pipeline.examples=2", *extra]
    return compose_cfg("pipeline", overrides, tmp_path / "pipe")


def statuses(report: dict) -> dict[str, str]:
    return {k: v["status"] for k, v in report["stages"].items()}


def test_arguments_the_pipeline_does_not_know_go_to_the_stages():
    kept = split_argv(["dataset=voc", "pipeline.ceiling=true", "model.dhr.tau=0.5", "trainer=ddp", "-m", "wss=mars"])
    assert kept[:3] == ["dataset=voc", "pipeline.ceiling=true", "-m"] and "wss=mars" in kept
    assert kept[-1] == 'pipeline.extra=["model.dhr.tau=0.5","trainer=ddp"]'
    assert set(READS) == set(STAGES) and all(set(r) <= set(STAGES) for r in READS.values())


@pytest.mark.slow
def test_pipeline_runs_caches_and_reruns_only_what_a_change_touches(tmp_path, synth_root, caplog):
    from dhr.pipeline import run

    caplog.set_level(logging.INFO)
    first = run(pipeline_cfg(tmp_path, synth_root))
    assert statuses(first) == {"seeds": "ran", "uss": "ran", "dhr": "ran", "final": "ran", "baseline": "ran",
                               "ceiling": "skipped", "report": "ran"}
    rows = first["rows"]
    assert set(rows) == {"seeds", "dhr_masks", "final", "baseline"}
    for name, row in rows.items():
        assert set(row) == {"mIoU", "mFPR", "mFNR", "per_class_iou", "split", "images", "protocol"}
        assert 0 < row["mIoU"] <= 100 and 0 <= row["mFPR"] and 0 <= row["mFNR"]
        assert set(row["per_class_iou"]) == set(first["classes"])
    assert rows["seeds"]["split"] == "train" and rows["seeds"]["images"] == rows["dhr_masks"]["images"] >= 20
    assert rows["final"]["split"] == "val" and rows["final"]["images"] == rows["baseline"]["images"] == 8
    assert rows["dhr_masks"]["protocol"]["thresholds"]["class_threshold"] == 0.05
    pipe = tmp_path / "pipe"
    for name in ("report.md", "report.json", "report.png", "per_class.png"):
        assert (pipe / name).is_file(), name
    from PIL import Image

    grid = Image.open(pipe / "report.png")
    assert grid.width > grid.height  # 2 example rows of 5 panels
    assert "stage dhr: start" in caplog.text and "stage dhr: done in" in caplog.text

    again = run(pipeline_cfg(tmp_path, synth_root))
    assert set(statuses(again).values()) == {"cached", "skipped"} and statuses(again)["report"] == "cached"

    changed = run(pipeline_cfg(tmp_path, synth_root, 'pipeline.overrides.dhr=["model.dhr.tau=0.5"]'))
    assert statuses(changed) == {"seeds": "cached", "uss": "cached", "dhr": "ran", "final": "ran", "baseline": "cached",
                                 "ceiling": "skipped", "report": "ran"}

    forced = run(pipeline_cfg(tmp_path, synth_root, "pipeline.force=[dhr]"))
    assert statuses(forced)["dhr"] == "ran" and statuses(forced)["final"] == "ran"
    assert statuses(forced)["baseline"] == "cached" and statuses(forced)["seeds"] == "cached"
    assert list(pipe.glob("dhr-*.replaced-*"))  # the earlier result is kept, not overwritten

