"""One ``crf`` node reaches every dense-CRF call: DHR relabelling in training, DHR masks, CAM seeds,
CAUSE evaluation. A spy on :class:`dhr.ops.crf.CRFRunner`, the one way into either backend, records
the parameters of each image's CRF."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import compose_cfg, dhr_overrides, model_hparams, tiny_train_overrides
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dhr.engine import configure_inference
from dhr.ops.crf import CRFRunner

SXY = "crf.bilateral_sxy=50"


@pytest.fixture
def spy(monkeypatch):
    seen: list[float] = []
    real = CRFRunner.__call__

    def recording(self, images, probs, progress=None):
        seen.extend([self.params.bilateral_sxy] * len(images))
        return real(self, images, probs, progress)

    monkeypatch.setattr(CRFRunner, "__call__", recording)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        yield seen


def first_batch(cfg, stage: str = "fit"):
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup(stage)
    loader = datamodule.train_dataloader() if stage == "fit" else datamodule.val_dataloader()
    return next(iter(loader))


def test_dhr_training_step_and_dhr_masks(spy, tmp_path, synth_root, dhr_inputs):
    seeds, _ = dhr_inputs
    cfg = compose_cfg("train", dhr_overrides(synth_root, seeds, SXY), tmp_path)
    module = instantiate(OmegaConf.to_container(cfg.model, resolve=True))
    module.training_step(first_batch(cfg), 0)
    assert spy and set(spy) == {50.0}  # Steps 1 and 2-3 of the relabelling
    spy.clear()
    default = instantiate(OmegaConf.to_container(compose_cfg("train", dhr_overrides(synth_root, seeds), tmp_path).model,
                                                 resolve=True))
    predict_cfg = compose_cfg("predict", ["model=dhr", "ckpt=x", SXY, "crf.processes=1"], tmp_path)
    configure_inference(default, predict_cfg.infer, predict_cfg.crf)  # dhr.predict's route: its own crf node wins
    batch = first_batch(cfg, "validate")
    default.predict_step({"image": batch["image"][:1], "id": batch["id"][:1]}, 0)
    assert spy == [50.0]


def test_cam_seeds(spy, tmp_path, synth_root):
    overrides = [o for o in tiny_train_overrides(synth_root) if not o.startswith("model.")]
    cfg = compose_cfg("train", [*overrides, "model=cam", SXY, "crf.processes=1"], tmp_path)
    module = instantiate(OmegaConf.to_container(cfg.model, resolve=True))
    configure_inference(module, cfg.infer, cfg.crf)
    batch = first_batch(cfg)
    module.predict_step({"image": batch["image"][:2], "id": ["a", "b"], "tags": batch["tags"][:2]}, 0)
    assert spy == [50.0, 50.0]


def test_cause_evaluation(spy):
    from dhr.modules.cause import CauseModule

    tiny = {"name": "vit_small_patch8_224", "embed_dim": 16, "depth": 1, "num_heads": 2}
    module = CauseModule(**model_hparams("cause", [SXY, "crf.processes=1"], backbone=tiny, num_classes=5,
                                         num_concepts=12, reduced_dim=6, projection_dim=10, ffn_dim=16, resolution=32,
                                         grid_k=2, bank_length=4))
    module.cluster_predict_crf(torch.randn(2, 3, 32, 32), (32, 32))
    assert spy == [50.0, 50.0]
