"""model=dhr end to end on the tiny synthetic set: seeds with the minor objects erased, USS
feature files, training with the online relabelling, DHR masks written by dhr.predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_cfg, dhr_overrides, predict_overrides, tiny_train_overrides, without

from dhr.data.synthetic import MINOR_IDS
from dhr.errors import DHRError
from dhr.utils.io import read_label_png


def test_erased_seeds_lose_exactly_the_minor_classes(dhr_inputs, synth_root):
    seeds, _ = dhr_inputs
    for path in sorted(seeds.glob("*.png"))[:6]:
        gt = read_label_png(synth_root / "SYNTH" / "train" / "mask" / path.name)
        seed = read_label_png(path)
        minor = np.isin(gt, MINOR_IDS)
        assert not np.isin(seed, MINOR_IDS).any() and (seed[minor] == 0).all()
        assert np.array_equal(seed[~minor], gt[~minor])


def test_dhr_trains_with_relabelling_and_writes_dhr_masks(tmp_path, synth_root, dhr_inputs, dhr_run):
    from dhr.predict import run as predict

    seeds, _ = dhr_inputs
    run_dir, ckpt = dhr_run.dir, dhr_run.ckpt
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["dhr_module"] == "dhr.modules.dhr.DHRModule"
    assert any(k.startswith("cam_head.") for k in state["ema_state_dict"])
    import csv

    rows = list(csv.DictReader(next((run_dir / "csv").rglob("metrics.csv")).open()))
    logged = {k: float(r[k]) for r in rows for k in r if k.startswith("train/") and r[k]}
    for name in ("train/seed_gt_acc", "train/mask_gt_acc"):
        assert 0 < logged[name] <= 1
    assert logged["train/dhr_changed_step1"] > 0 and logged["train/dhr_changed_step23"] > 0  # relabelling changed pixels
    wss = tmp_path / "wss"
    overrides = predict_overrides(synth_root, ckpt, f"paths.wss_root={wss}", "model=dhr", "split=train")
    result = predict(compose_cfg("predict", overrides, tmp_path / "p"))
    masks = wss / "SYNTH" / "DHR" / "train"
    assert result["out_dir"] == str(masks) and len(list(masks.glob("*.png"))) == 24
    assert len(list((wss / "SYNTH" / "DHR" / "train_nocrf").glob("*.png"))) == 24
    assert {"scores", "scores_label"} <= set(result)
    written = read_label_png(next(masks.glob("*.png")))
    assert written.shape == read_label_png(synth_root / "SYNTH" / "train" / "mask" / next(masks.glob("*.png")).name).shape


def test_step1_restores_the_erased_minor_seeds(synth_root, dhr_inputs, tmp_path):
    """The seeds lack every bolt and gem; Step 1 pastes them back from the CAMs wherever the tags name them."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dhr.ops.relabel import relabel

    seeds, _ = dhr_inputs
    cfg = compose_cfg("train", dhr_overrides(synth_root, seeds, "model.dhr.steps=[1]", "recipe.batch_size=8"), tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = instantiate(OmegaConf.to_container(cfg.model, resolve=True))
    import pytorch_lightning as pl

    pl.seed_everything(0)  # the crops (python random) and the shuffle
    batch = next(iter(datamodule.train_dataloader()))
    minor_fg = [c - 1 for c in MINOR_IDS]  # tag columns skip the background
    tagged = batch["tags"][:, minor_fg].sum(1) > 0
    assert tagged.any() and not np.isin(batch["mask"].numpy(), MINOR_IDS).any()
    with torch.no_grad():
        out = module.forward_train(batch["image"])

    def step1(cams):
        return relabel(batch["mask"], cams=cams, tags=batch["tags"], images=batch["image"], boxes=batch["crop_box"],
                       uss=None, wss_feats=[], num_classes=9, background_id=0, cfg=module.relabel_cfg,
                       crf=module.crf_runner).masks

    minor = torch.tensor(MINOR_IDS)
    restored = torch.isin(step1(out["cams"]), minor).flatten(1).any(1)  # the network's own CAMs (3 training steps)
    assert restored[tagged].any() and not restored[~tagged].any()
    # CAMs that know where the objects are (GT one-hot at the CAM resolution): restored where GT has them
    gt = batch["gt"].clone()
    gt[gt == 255] = 0
    onehot = torch.nn.functional.one_hot(gt, 9).permute(0, 3, 1, 2).float()[:, 1:]
    oracle = torch.nn.functional.adaptive_avg_pool2d(onehot, out["cams"].shape[-2:]) * 10
    masks = step1(oracle)
    for c in MINOR_IDS:
        truth, pasted = batch["gt"] == c, masks == c
        if truth.any():  # restored pixels sit on the object far above chance (precision vs the class's pixel share)
            precision = float((pasted & truth).sum()) / max(1, int(pasted.sum()))
            assert precision > 5 * float(truth.float().mean()), f"class {c}: precision {precision:.2f}"


def test_dhr_refuses_missing_inputs(tmp_path, synth_root, dhr_inputs):
    from dhr.train import run as train

    seeds, uss = dhr_inputs
    with pytest.raises(DHRError, match="USS feature folder not found"):
        train(compose_cfg("train", dhr_overrides(synth_root, seeds, "model.dhr.uss_name=NOPE"), tmp_path / "a"))
    with pytest.raises(DHRError, match="model.dhr.uss_patch=8"):
        train(compose_cfg("train", dhr_overrides(synth_root, seeds, "model.dhr.uss_patch=14"), tmp_path / "b"))
    cfg = compose_cfg("train", [*tiny_train_overrides(synth_root), "model=dhr", "model.dhr.uss_name=CAUSE_TEST",
                                "model.dhr.uss_patch=8"], tmp_path / "c")
    with pytest.raises(DHRError, match="no seeds are chosen: add wss="):
        train(cfg)


def test_init_from_a_cam_checkpoint_copies_backbone_and_cam_head(tmp_path, synth_root, cam_run):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dhr.utils.checkpoint import EMA_KEY as CKPT_KEY

    overrides = without(tiny_train_overrides(synth_root), "model.")
    ckpt = cam_run.ckpt
    cam = torch.load(ckpt, map_location="cpu", weights_only=True)[CKPT_KEY]
    cfg = compose_cfg("train", [*overrides, "model=dhr", f"model.init_from={ckpt}"], tmp_path / "d")
    module = instantiate(OmegaConf.to_container(cfg.model, resolve=True))
    assert torch.equal(module.cam_head.weight, cam["classifier.weight"])
    assert torch.equal(module.net.backbone.state_dict()["layer4.0.conv2.weight"], cam["backbone.layer4.0.conv2.weight"])
    torch.save({"dhr_module": "other"}, tmp_path / "x.ckpt")
    with pytest.raises(DHRError, match="not a model=cam checkpoint"):
        module.init_from_cam(str(tmp_path / "x.ckpt"))


def test_relabelling_off_reads_no_uss_feature(synth_root, dhr_inputs, tmp_path):
    """The control (``model.dhr.enabled=false``) trains the same weights with or without USS features, so the
    pipeline gives it none and one control serves every feature choice (its cache key leaves them out)."""
    from dhr.train import run

    seeds, _ = dhr_inputs
    weights = []
    for name, uss in (("with", []), ("without", ["data.uss_dir=null"])):
        overrides = dhr_overrides(synth_root, seeds, "model.dhr.enabled=false", "evaluate_after_fit=false", *uss)
        run(compose_cfg("train", overrides, tmp_path / name))
        weights.append(torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu",
                                  weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
