"""DINO pre-training (dhr/ops/dino.py, dhr/modules/dino.py, dhr/data/multicrop.py): the objective against
a direct NumPy reading of the paper's formula, the schedules, images-only data, and a tiny fit whose
exported teacher is the ViT that CAUSE then loads."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import TEST_ACCELERATOR, compose_cfg, train_once

from dhr.errors import DHRError
from dhr.models.dino_head import DINOHead
from dhr.ops.dino import dino_loss, ema_update, teacher_momentum, updated_center


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_dino_loss_is_the_cross_entropy_of_every_other_view_pair():
    rng = np.random.default_rng(0)
    student = [rng.normal(size=(3, 7)) for _ in range(4)]  # 2 global + 2 local crops
    teacher = [rng.normal(size=(3, 7)) for _ in range(2)]
    center = rng.normal(size=(1, 7)) * 0.1
    ref, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        p_t = _softmax((t - center) / 0.04)
        for j, s in enumerate(student):
            if i != j:
                ref += float(np.mean(np.sum(-p_t * np.log(_softmax(s / 0.1)), -1)))
                pairs += 1
    got = dino_loss([torch.tensor(s) for s in student], [torch.tensor(t) for t in teacher], torch.tensor(center),
                    student_temp=0.1, teacher_temp=0.04)
    assert pairs == 6
    assert got.item() == pytest.approx(ref / pairs, rel=1e-9)


def test_loss_reaches_the_student_only():
    s = [torch.randn(2, 5, requires_grad=True) for _ in range(3)]
    t = [torch.randn(2, 5, requires_grad=True) for _ in range(2)]
    dino_loss(s, t, torch.zeros(1, 5), student_temp=0.1, teacher_temp=0.04).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)


def test_centre_schedule_and_ema_follow_their_formulas():
    center = torch.ones(1, 4)
    teacher = [torch.full((2, 4), 3.0), torch.full((2, 4), 5.0)]
    assert torch.allclose(updated_center(center, teacher, 0.9), torch.full((1, 4), 0.9 + 0.1 * 4.0))
    assert teacher_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert teacher_momentum(99, 100, 0.99) == pytest.approx(1.0)
    assert teacher_momentum(49, 100, 0.99) == pytest.approx(0.995, abs=1e-4)
    values = [teacher_momentum(k, 100, 0.99) for k in range(100)]
    assert values == sorted(values)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [0.8 * p.detach() + 0.2 * q.detach() for p, q in zip(a.parameters(), b.parameters(), strict=True)]
    ema_update(a, b, 0.8)
    assert all(torch.allclose(p, e) for p, e in zip(a.parameters(), expected, strict=True))


def test_head_keeps_the_last_layer_norm_fixed():
    head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, norm_last_layer=True)
    out = head(torch.randn(5, 16))
    out.sum().backward()
    g = head.last_layer.parametrizations.weight.original0
    assert out.shape == (5, 32) and not g.requires_grad and torch.all(g == 1)
    assert head.last_layer.parametrizations.weight.original1.grad is not None


def dino_overrides(data_root) -> list[str]:
    from conftest import GENERATE

    return [f"paths.data_root={data_root}", GENERATE, "model=dino", "backbone.embed_dim=16", "backbone.depth=1",
            "model.out_dim=32", "model.hidden_dim=16", "model.bottleneck_dim=8", "data.batch_size=4",
            "data.views.global_size=32", "data.views.local_size=16", "data.views.local_crops=2",
            "recipe.num_workers=0", "recipe.max_epochs=2", "trainer.limit_train_batches=3",
            f"trainer.accelerator={TEST_ACCELERATOR}", "trainer.enable_model_summary=false", "~callbacks.progress_bar"]


def test_multicrop_views_read_images_only_and_repeat_their_draws(tmp_path, synth_root):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    for masks in (root / "SYNTH").glob("*/mask"):
        shutil.rmtree(masks)  # no mask may be needed, or read
    cfg = compose_cfg("train", dino_overrides(root), tmp_path / "run")
    dm = instantiate(OmegaConf.to_container(cfg.data, resolve=True))
    dm.setup("fit")
    item = dm.data_train[3]
    assert set(item) == {"id", "crops"}
    assert [tuple(c.shape) for c in item["crops"]] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    again, other = dm.data_train[3], dm.data_train[3 + len(dm.data_train)]  # the same image in the next epoch
    assert all(torch.equal(a, b) for a, b in zip(item["crops"], again["crops"], strict=True))
    assert other["id"] == item["id"] and not torch.equal(other["crops"][0], item["crops"][0])


@pytest.fixture(scope="module")
def dino_run(synth_root, tmp_path_factory):
    return train_once(tmp_path_factory, "dino", dino_overrides(synth_root))


def test_tiny_fit_moves_the_teacher_and_exports_what_cause_loads(dino_run):
    from dhr.models.frozen import frozen_from_cfg
    from dhr.modules.dino import DINOModule
    from dhr.utils.checkpoint import read_checkpoint

    ckpt = read_checkpoint(dino_run.dir / "checkpoints" / "last.ckpt")
    module = DINOModule(**ckpt["hyper_parameters"])
    start = {k: v.clone() for k, v in module.teacher["backbone"].state_dict().items()}
    module.load_state_dict(ckpt["state_dict"])
    assert np.isfinite(dino_run.metrics["train/loss"])
    assert ckpt["global_step"] == 6
    moved = [k for k, v in module.teacher["backbone"].state_dict().items() if not torch.equal(v, start[k])]
    assert len(moved) > len(start) // 2, "the EMA teacher did not follow the student"
    assert module.center.abs().sum() > 0
    # CAUSE's frozen ViT with backbone.weights=<run>/backbone.pth is the trained teacher, key for key
    frozen = frozen_from_cfg({"name": "vit_small_patch8_224", "weights": str(dino_run.dir / "backbone.pth"),
                              "embed_dim": 16, "depth": 1, "num_heads": 2})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = module.teacher["backbone"].forward_features(x)[:, 1:]
    assert torch.allclose(frozen(x), tokens.transpose(1, 2).reshape(2, 16, 4, 4), atol=1e-6)


def test_a_non_finite_loss_stops_with_the_fix(synth_root, tmp_path):
    from dhr.train import run

    cfg = compose_cfg("train", [*dino_overrides(synth_root), "model.lr=1e30", "model.grad_clip=null",
                                "model.warmup_fraction=0"], tmp_path / "run")
    with pytest.raises(DHRError, match="lower model.lr"):
        run(cfg)


def test_ddp_on_cpu_keeps_student_teacher_and_centre_identical(tmp_path, synth_root):
    """Under DDP the centre is the mean over every rank's teacher outputs: the replicas stay equal, centre included."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    class Dump(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            torch.save({k: v.cpu() for k, v in pl_module.state_dict().items()}, tmp_path / f"rank{trainer.global_rank}.pt")

    cfg = compose_cfg("train", dino_overrides(synth_root), tmp_path / "run")
    module = instantiate(OmegaConf.to_container(cfg.model, resolve=True))
    data = instantiate(OmegaConf.to_container(cfg.data, resolve=True))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Dump()])
    trainer.fit(module, datamodule=data)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["center"].abs().sum() > 0
    for key in r0:
        assert torch.equal(r0[key], r1[key]), f"replicas differ at {key}"
