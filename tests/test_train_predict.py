"""dhr.train / dhr.predict in-process on the tiny synthetic set: the whole loop on real computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_cfg, copy_run, predict_overrides, tiny_train_overrides

from dhr.errors import DHRError
from dhr.utils.io import read_label_png


def train_cfg(tmp_path, synth_root, *extra: str):
    return compose_cfg("train", [*tiny_train_overrides(synth_root), *extra], tmp_path / "run")


def test_fit_writes_checkpoints_ema_and_evaluates_val(deeplab_run, synth_root):
    run_dir, metrics = deeplab_run.dir, deeplab_run.metrics
    last = run_dir / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert "ema_state_dict" in state and state["global_step"] == 3
    online, ema = state["state_dict"], state["ema_state_dict"]
    key = "net.head.classifier.weight"
    assert not torch.equal(online[key], ema[key])  # EMA differs from the online weights
    preds = sorted((run_dir / "predictions" / "validation").glob("*.png"))
    assert len(preds) == 8
    label = read_label_png(preds[0])
    gt = read_label_png(synth_root / "SYNTH" / "validation" / "mask" / preds[0].name)
    assert label.shape == gt.shape and set(np.unique(label).tolist()) <= set(range(9))
    out = deeplab_run.stdout
    assert "DeepLabv3+ | mIoU:" in out and "evaluated 8 / expected" in out
    from dhr.ops.evaluation import (
        evaluate_folder,  # the score after fit is the evaluator's on the written PNGs
    )

    again = evaluate_folder(run_dir / "predictions" / "validation", synth_root / "SYNTH" / "validation" / "mask",
                            num_classes=9, background_id=0)
    assert metrics["eval/mIoU"] == pytest.approx(again.scores.miou) and np.isfinite(metrics["val/mIoU"])
    assert (run_dir / "csv" / "version_0" / "metrics.csv").is_file()


def test_resume_from_last_continues_the_step_count(tmp_path, synth_root, deeplab_run):
    from dhr.train import run

    run_dir = copy_run(deeplab_run, tmp_path / "run")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 3
    run(train_cfg(tmp_path, synth_root, "evaluate_after_fit=false", "ckpt_path=last", "recipe.max_epochs=2"))
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 6  # 3 more steps, not 6 from scratch
    with pytest.raises(DHRError, match=r"another model or dataset \(\d+ tensors differ in shape, e.g. net\..*in the file"):
        run(train_cfg(tmp_path, synth_root, f"ckpt_path={ckpt}", "model.aspp_channels=8", "recipe.max_epochs=3"))
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 6  # refused before training


def test_predict_cli_writes_pngs_and_refuses_to_overwrite(tmp_path, synth_root, deeplab_run):
    from dhr.predict import run as predict

    ckpt = deeplab_run.ckpt
    out_dir = tmp_path / "preds"
    overrides = predict_overrides(synth_root, ckpt, f"out_dir={out_dir}", "split=train", "infer.flip=false")
    result = predict(compose_cfg("predict", overrides, tmp_path / "p1"))
    assert result["written"] == 24 and len(list(out_dir.glob("*.png"))) == 24
    from dhr.ops.evaluation import evaluate_folder

    again = evaluate_folder(out_dir, synth_root / "SYNTH" / "train" / "mask", num_classes=9, background_id=0)
    assert result["scores"]["mIoU"] == pytest.approx(again.scores.miou)
    with pytest.raises(DHRError, match="already holds the finished predictions of this checkpoint"):
        predict(compose_cfg("predict", overrides, tmp_path / "p2"))
    with pytest.raises(DHRError, match=r"other settings \(split differ\)"):
        predict(compose_cfg("predict", [*overrides[:-2], "split=val", "infer.flip=false"], tmp_path / "p2b"))
    predict(compose_cfg("predict", [*overrides, "overwrite=true"], tmp_path / "p3"))
    crf_out = tmp_path / "crf"  # infer.crf: the CRF-refined maps, and beside them the maps before the CRF
    crf_overrides = predict_overrides(synth_root, ckpt, f"out_dir={crf_out}", "split=train", "infer.flip=false", "infer.crf=true",
                                      "crf.processes=1")
    with_crf = predict(compose_cfg("predict", crf_overrides, tmp_path / "p4"))
    assert len(list(crf_out.glob("*.png"))) == len(list((tmp_path / "crf_nocrf").glob("*.png"))) == 24
    assert with_crf["scores_label"]["mIoU"] == pytest.approx(result["scores"]["mIoU"])  # no-CRF maps: as before


def test_an_interrupted_prediction_resumes_and_inputs_are_never_written(tmp_path, synth_root, deeplab_run, monkeypatch):
    from dhr.callbacks.prediction_writer import PaletteWriter
    from dhr.predict import run as predict

    ckpt = deeplab_run.ckpt
    out_dir = tmp_path / "preds"
    overrides = predict_overrides(synth_root, ckpt, f"out_dir={out_dir}", "split=train", "infer.flip=false")
    real = PaletteWriter.write_on_batch_end

    def dies_after_ten(self, *args, **kwargs):
        if len(list(out_dir.glob("*.png"))) >= 10:
            raise KeyboardInterrupt  # the run is killed after 10 images
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PaletteWriter, "write_on_batch_end", dies_after_ten)
    with pytest.raises((SystemExit, DHRError)):  # Lightning turns the Ctrl-C into exit 1 (older ones return)
        predict(compose_cfg("predict", overrides, tmp_path / "p1"))
    monkeypatch.setattr(PaletteWriter, "write_on_batch_end", real)
    first = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.png")}
    assert len(first) == 10
    resumed = predict(compose_cfg("predict", overrides, tmp_path / "p2"))
    assert resumed["resumed"] == 10 and resumed["written"] == 14 and len(list(out_dir.glob("*.png"))) == 24
    assert all((out_dir / name).stat().st_mtime_ns == t for name, t in first.items())  # finished files kept
    whole = tmp_path / "whole"
    full = predict(compose_cfg("predict", predict_overrides(synth_root, ckpt, f"out_dir={whole}", "split=train",
                                                            "infer.flip=false"), tmp_path / "p3"))
    assert full["scores"]["mIoU"] == pytest.approx(resumed["scores"]["mIoU"])
    gt = synth_root / "SYNTH" / "train" / "mask"
    before = sorted((p.name, p.read_bytes()) for p in gt.glob("*.png"))
    for target in (gt, gt / "sub", synth_root / "SYNTH" / "train" / "image"):  # GT, inside it, the images
        with pytest.raises(DHRError, match="lies inside .*outputs never go"):
            predict(compose_cfg("predict", [*predict_overrides(synth_root, ckpt, f"out_dir={target}", "split=train"),
                                            "overwrite=true"], tmp_path / "p4"))
    assert sorted((p.name, p.read_bytes()) for p in gt.glob("*.png")) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.png").write_bytes((gt / "tr_00000.png").read_bytes())
    with pytest.raises(DHRError, match="1 PNGs that dhr.predict did not write"):
        predict(compose_cfg("predict", predict_overrides(synth_root, ckpt, f"out_dir={foreign}", "split=train"),
                            tmp_path / "p5"))


def test_bad_training_mask_fails_before_training(tmp_path, synth_root):
    import shutil

    from dhr.data.palette import make_palette
    from dhr.train import run
    from dhr.utils.io import save_label_png

    masks = tmp_path / "pseudo"
    shutil.copytree(synth_root / "SYNTH" / "train" / "mask", masks)
    bad = read_label_png(masks / "tr_00003.png").copy()
    bad[0, 0] = 77
    save_label_png(masks / "tr_00003.png", bad, make_palette("voc", 9))
    (masks / "tr_00005.png").unlink()
    with pytest.raises(DHRError, match=r"2 problem\(s\) .* found before training") as err:
        run(train_cfg(tmp_path, synth_root, "data.masks=seeds", f"data.seeds_dir={masks}"))
    assert "tr_00003.png: values [77] are not class ids" in str(err.value)
    assert "no seed for image tr_00005.jpg" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nan_loss_is_reported_with_a_fix(tmp_path, synth_root):
    from dhr.train import run

    with pytest.raises(DHRError, match="training loss is nan.*lower model.optim.lr"):
        run(train_cfg(tmp_path, synth_root, "model.optim.lr=1e30", "trainer.limit_train_batches=3"))


def test_fast_dev_run_composes_every_trainer_flag(tmp_path, synth_root):
    from dhr.train import run

    metrics = run(train_cfg(tmp_path, synth_root, "debug=fdr"))
    assert np.isfinite(metrics["train/loss_step"])


def test_unreadable_checkpoint_is_named(tmp_path):
    from dhr.utils.checkpoint import load_module

    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DHRError, match="ckpt=.*broken.ckpt: not a readable checkpoint"):
        load_module(bad)
    with pytest.raises(DHRError, match="checkpoint not found"):
        load_module(tmp_path / "missing.ckpt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "weights.pt")
    with pytest.raises(DHRError, match="not a dhr.train checkpoint"):
        load_module(tmp_path / "weights.pt")


def test_all_loggers_together(tmp_path, synth_root, monkeypatch):
    from dhr.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run(train_cfg(tmp_path, synth_root, "logger=many", "evaluate_after_fit=false", "trainer.limit_train_batches=1"))
    run_dir = tmp_path / "run"
    assert (run_dir / "csv" / "version_0" / "metrics.csv").is_file()
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_wss_seed_folders_resolve_to_the_official_layout(tmp_path):
    cfg = compose_cfg("train", ["dataset=voc", "wss=mars", "paths.data_root=/d"], tmp_path)
    assert cfg.wss.path == "/d/WSS/VOC2012/MARS/train_aug" and cfg.data.masks == "seeds"
    assert cfg.data.seeds_dir == cfg.wss.path
    cfg = compose_cfg("train", ["dataset=coco", "wss=rsepm", "paths.data_root=/d"], tmp_path)
    assert cfg.data.seeds_dir == "/d/WSS/COCO2014/RSEPM/train"


def test_external_seeds_are_checked_before_training(tmp_path, synth_root):
    import shutil

    from dhr.train import run

    seeds = tmp_path / "seeds"
    shutil.copytree(synth_root / "SYNTH" / "train" / "mask", seeds)
    (seeds / "tr_00007.png").unlink()
    from PIL import Image

    with Image.open(seeds / "tr_00002.png") as im:
        im.resize((im.width + 3, im.height)).save(seeds / "tr_00002.png")
    with pytest.raises(DHRError, match=r"2 problem\(s\)") as err:
        run(train_cfg(tmp_path, synth_root, "wss=folder", f"wss.path={seeds}"))
    assert "tr_00002.png: seed is 69x59 but the image is 66x59 (WxH)" in str(err.value)
    assert "no seed for image tr_00007.jpg" in str(err.value)
    with pytest.raises(DHRError, match="folder of seed masks not found"):
        run(train_cfg(tmp_path, synth_root, "wss=cam"))  # no CAM seeds generated yet


def test_cam_baseline_trains_on_tags_and_writes_seeds_with_and_without_crf(tmp_path, synth_root, cam_run):
    from dhr.predict import run as predict

    ckpt = cam_run.ckpt
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["dhr_module"] == "dhr.modules.cam.CAMModule"
    wss = tmp_path / "wss"
    overrides = predict_overrides(synth_root, ckpt, f"paths.wss_root={wss}", "model=cam", "split=val")
    result = predict(compose_cfg("predict", overrides, tmp_path / "p"))
    seeds = wss / "SYNTH" / "CAM" / "validation"
    assert result["out_dir"] == str(seeds) and len(list(seeds.glob("*.png"))) == 8
    assert len(list((wss / "SYNTH" / "CAM" / "validation_nocrf").glob("*.png"))) == 8
    assert {"scores", "scores_label"} <= set(result)  # CRF seeds and pre-CRF maps both scored
    from dhr.data.layout import DatasetInfo, DatasetLayout
    from dhr.data.synthetic import SYNTH_CLASSES

    tags = DatasetLayout(synth_root, DatasetInfo(name="SYNTH", classes=SYNTH_CLASSES, splits={"val": "validation"},
                                                 background_id=0)).read_tags("val")
    for path in sorted(seeds.glob("*.png")):  # seeds hold background and the image's tagged classes only
        assert set(np.unique(read_label_png(path)).tolist()) <= {0, *tags[path.stem]}, path.name


def test_trainer_plugins_write_checkpoints_atomically_and_turn_slurm_auto_requeue_off_under_submitit(monkeypatch):
    from lightning_fabric.plugins.environments import SLURMEnvironment
    from omegaconf import OmegaConf

    from dhr.train import trainer_plugins

    def names(cfg: dict) -> list[str]:
        return [type(p).__name__ for p in trainer_plugins(OmegaConf.create(cfg))["plugins"]]

    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert names({}) == ["AtomicCheckpointIO"]
    theirs = {"_target_": "pytorch_lightning.plugins.io.TorchCheckpointIO"}
    assert names({"plugins": [theirs]}) == ["TorchCheckpointIO"]  # a CheckpointIO of the config wins
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # what submitit exports in its sbatch script
    plugins = trainer_plugins(OmegaConf.create({}))["plugins"]
    assert isinstance(plugins[1], SLURMEnvironment) and plugins[1].auto_requeue is False
    own = {"plugins": [{"_target_": "dhr.ops.sync_batchnorm.SyncBatchNormAnyDevice"}]}
    assert names(own) == ["SyncBatchNormAnyDevice", "AtomicCheckpointIO", "SLURMEnvironment"]  # kept, and added
    mine = {"_target_": "lightning_fabric.plugins.environments.SLURMEnvironment", "auto_requeue": True}
    assert trainer_plugins(OmegaConf.create({"plugins": [mine]}))["plugins"][0].auto_requeue  # the user's environment wins
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert names({}) == ["AtomicCheckpointIO"]
