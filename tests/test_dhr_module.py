"""model=dhr end to end on the tiny synthetic set: seeds with the minor objects erased, USS
feature files, training with the online relabelling, DHR masks written by dhr.predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dhr.data.synthetic import MINOR_IDS, write_erased_seeds
from dhr.data.uss import feature_grid
from dhr.errors import DHRError
from dhr.utils.io import read_label_png, read_rgb
from tests.conftest import TEST_ACCELERATOR, compose_cfg, tiny_train_overrides


@pytest.fixture(scope="module")
def dhr_inputs(synth_root, tmp_path_factory):
    """Erased-minor seeds and random 6-d 'USS' maps of the exporter's shape (patch 8)."""
    wss = tmp_path_factory.mktemp("wss")
    seeds = wss / "SYNTH" / "ERASED" / "train"
    assert write_erased_seeds(synth_root / "SYNTH" / "train" / "mask", seeds) == 24
    uss = synth_root / "SYNTH" / "train" / "CAUSE_TEST"
    uss.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for image in sorted((synth_root / "SYNTH" / "train" / "image").glob("*")):
        with read_rgb(image) as im:
            h, w = im.height, im.width
        torch.save(torch.randn(6, *feature_grid(h, w, 8), generator=g).half(), uss / f"{image.stem}.pt")
    (uss / "manifest.json").write_text(json.dumps({"patch": 8}))
    return seeds, uss


def dhr_overrides(synth_root, seeds, *extra):
    base = [o for o in tiny_train_overrides(synth_root)]
    return [*base, "experiment=synthetic_dhr", "wss=folder", f"wss.path={seeds}", "dhr.uss_name=CAUSE_TEST",
            "dhr.crf_processes=1", "dhr.tau=0.0", *extra]


def test_erased_seeds_lose_exactly_the_minor_classes(dhr_inputs, synth_root):
    seeds, _ = dhr_inputs
    for path in sorted(seeds.glob("*.png"))[:6]:
        gt = read_label_png(synth_root / "SYNTH" / "train" / "mask" / path.name)
        seed = read_label_png(path)
        minor = np.isin(gt, MINOR_IDS)
        assert not np.isin(seed, MINOR_IDS).any() and (seed[minor] == 0).all()
        assert np.array_equal(seed[~minor], gt[~minor])


def test_dhr_trains_with_relabelling_and_writes_dhr_masks(tmp_path, synth_root, dhr_inputs):
    from dhr.predict import run as predict
    from dhr.train import run as train

    seeds, _ = dhr_inputs
    run_dir = tmp_path / "run"
    train(compose_cfg("train", dhr_overrides(synth_root, seeds, "evaluate_after_fit=false"), run_dir))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["dhr_module"] == "dhr.modules.dhr.DHRModule"
    assert any(k.startswith("cam_head.") for k in state["ema_state_dict"])
    metrics = (next((run_dir / "csv").rglob("metrics.csv"))).read_text()
    for name in ("train/dhr_changed_step1", "train/dhr_changed_step23", "train/seed_gt_acc", "train/mask_gt_acc"):
        assert name in metrics
    wss = seeds.parents[2]
    overrides = [f"paths.data_root={synth_root}", f"paths.wss_root={wss}", f"ckpt={ckpt}", "model=dhr", "split=train",
                 "infer.scales=[1.0]", f"trainer.accelerator={TEST_ACCELERATOR}", "num_workers=0", "dataset.generate=null"]
    result = predict(compose_cfg("predict", overrides, tmp_path / "p"))
    masks = wss / "SYNTH" / "DHR" / "train"
    assert result["out_dir"] == str(masks) and len(list(masks.glob("*.png"))) == 24
    assert len(list((wss / "SYNTH" / "DHR" / "train_nocrf").glob("*.png"))) == 24
    assert "scores" in result and "scores_label" in result
    assert read_label_png(next(masks.glob("*.png"))).max() < 9


def test_dhr_refuses_missing_inputs(tmp_path, synth_root, dhr_inputs):
    from dhr.train import run as train

    seeds, uss = dhr_inputs
    with pytest.raises(DHRError, match="USS feature folder not found"):
        train(compose_cfg("train", dhr_overrides(synth_root, seeds, "dhr.uss_name=NOPE"), tmp_path / "a"))
    with pytest.raises(DHRError, match="dhr.uss_patch=8"):
        train(compose_cfg("train", dhr_overrides(synth_root, seeds, "dhr.uss_patch=14"), tmp_path / "b"))
    cfg = compose_cfg("train", [*tiny_train_overrides(synth_root), "model=dhr", "dhr.uss_name=CAUSE_TEST",
                                "dhr.uss_patch=8"], tmp_path / "c")
    with pytest.raises(DHRError, match="choose them with wss="):
        train(cfg)


def test_init_from_a_cam_checkpoint_copies_backbone_and_cam_head(tmp_path, synth_root):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dhr.callbacks.ema import CKPT_KEY
    from dhr.train import run as train

    overrides = [o for o in tiny_train_overrides(synth_root) if not o.startswith("model.")]
    train(compose_cfg("train", [*overrides, "model=cam"], tmp_path / "cam"))
    ckpt = tmp_path / "cam" / "checkpoints" / "last.ckpt"
    cam = torch.load(ckpt, map_location="cpu", weights_only=True)[CKPT_KEY]
    cfg = compose_cfg("train", [*overrides, "model=dhr", f"model.init_from={ckpt}"], tmp_path / "d")
    module = instantiate(OmegaConf.to_container(cfg.model, resolve=True))
    assert torch.equal(module.cam_head.weight, cam["classifier.weight"])
    assert torch.equal(module.net.backbone.state_dict()["layer4.1.conv2.weight"], cam["backbone.layer4.1.conv2.weight"])
    torch.save({"dhr_module": "other"}, tmp_path / "x.ckpt")
    with pytest.raises(DHRError, match="not a model=cam checkpoint"):
        module.init_from_cam(str(tmp_path / "x.ckpt"))
