"""model=mask2former through dhr.train / dhr.predict on the tiny synthetic set, DDP on CPU included."""

from __future__ import annotations

import numpy as np
import torch
from conftest import DDP_FORK, compose_cfg, copy_run, predict_overrides, tiny_mask2former_overrides

from dhr.utils.io import read_label_png


def train_cfg(tmp_path, synth_root, *extra: str):
    return compose_cfg("train", [*tiny_mask2former_overrides(synth_root), *extra], tmp_path / "run")


def test_fit_evaluates_and_predict_reloads_with_crf_and_the_server_layout(tmp_path, synth_root, mask2former_run):
    from dhr.predict import run as predict

    metrics = mask2former_run.metrics
    assert np.isfinite(metrics["val/mIoU"]) and np.isfinite(metrics["eval/mIoU"])
    assert "Mask2Former | mIoU:" in mask2former_run.stdout
    ckpt = mask2former_run.ckpt
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["dhr_module"] == "dhr.modules.mask2former.Mask2FormerModule" and "ema_state_dict" in state

    out = tmp_path / "preds"
    overrides = predict_overrides(synth_root, ckpt, f"out_dir={out}", "infer.scales=[1.0,0.5]", "infer.flip=true",
                                  "infer.crf=true", "crf.processes=1")
    result = predict(compose_cfg("predict", overrides, tmp_path / "p"))
    crf, plain = sorted(out.glob("*.png")), sorted((tmp_path / "preds_nocrf").glob("*.png"))
    assert result["written"] == 8 and len(crf) == 8 and len(plain) == 8
    gt = read_label_png(synth_root / "SYNTH" / "validation" / "mask" / crf[0].name)
    assert read_label_png(crf[0]).shape == gt.shape
    assert "scores" in result and "scores_label" in result  # both versions scored against GT

    server = tmp_path / "server"
    predict(compose_cfg("predict", [*predict_overrides(synth_root, ckpt, f"out_dir={server}"), "voc_server=true"],
                        tmp_path / "p2"))
    assert len(list((server / "results" / "VOC2012" / "Segmentation" / "comp5_test_cls").glob("*.png"))) == 8


def test_resume_from_last_continues(tmp_path, synth_root, mask2former_run):
    from dhr.train import run

    copy_run(mask2former_run, tmp_path / "run")
    run(train_cfg(tmp_path, synth_root, "evaluate_after_fit=false", "ckpt_path=last", "recipe.max_epochs=2"))
    after = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert after["global_step"] == 6


def test_the_whole_model_gradient_norm_is_clipped(tmp_path, synth_root):
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    cfg = train_cfg(tmp_path, synth_root, "model.optim.clip_grad_norm=0.01")
    module = instantiate(cfg.model)
    datamodule = instantiate(cfg.data)
    norms: list[float] = []

    class GradNorm(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[GradNorm()],
                         limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    assert len(norms) == 2 and all(0 < n <= 0.01 * 1.0001 for n in norms)


def test_one_ddp_cpu_step(tmp_path, synth_root):
    from dhr.train import run

    run(train_cfg(tmp_path, synth_root, *DDP_FORK, "trainer.limit_train_batches=1", "evaluate_after_fit=false"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1  # both processes took the step together (the mask count all-reduced)
