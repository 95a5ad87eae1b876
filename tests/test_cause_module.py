"""CAUSE LightningModule: stage freezing, the label-leak fix, EMA teacher, and a tiny end-to-end fit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_cfg, copy_run, model_hparams

from dhr.modules.cause import CauseModule

TINY_VIT = {"name": "vit_small_patch8_224", "embed_dim": 16, "depth": 1, "num_heads": 2}


def tiny_module(**kw) -> CauseModule:
    args = dict(backbone=TINY_VIT, num_classes=5, num_concepts=12, reduced_dim=6, projection_dim=10, ffn_dim=16,
                resolution=32, grid_k=2, bank_length=4)
    return CauseModule(**model_hparams("cause", **{**args, **kw}))


def batch(b: int = 2) -> dict:
    torch.manual_seed(0)
    return {"image": torch.randn(b, 3, 32, 32), "label": torch.randint(0, 5, (b, 32, 32))}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        yield


def test_probe_losses_never_reach_the_teacher_head():
    module = tiny_module(stage="probe")
    module.training_step(batch(), 0).backward()
    assert all(p.grad is None for p in module.head_ema.parameters())
    assert module.cluster_probe.grad is not None and module.cluster_probe.grad.abs().sum() > 0
    assert module.linear_probe.weight.grad is not None
    assert all(p.grad is None for p in module.head.parameters()) and module.codebook.grad is None


def test_stage3_leak_switch_reproduces_the_release():
    module = tiny_module(stage="probe", stage3_leak=True)
    module.training_step(batch(), 0).backward()
    grads = [p.grad for p in module.head_ema.parameters()]
    assert len(grads) == 25 and all(g is not None for g in grads)  # all 25 teacher tensors, as in the release


def test_clusterbook_stage_trains_only_the_codebook():
    module = tiny_module(stage="clusterbook")
    module.training_step(batch(), 0).backward()
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable == ["codebook"] and module.codebook.grad.abs().sum() > 0


def test_head_stage_updates_teacher_by_ema_and_fills_the_bank():
    module = tiny_module(stage="head", ema_decay=0.5)
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    before = {k: v.clone() for k, v in module.head_ema.state_dict().items()}
    loss = module.training_step(batch(), 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in module.head_ema.parameters())
    opt.step()
    module.on_train_batch_end(None, None, 0)
    student = module.head.state_dict()
    key = "tr.f1.weight"
    torch.testing.assert_close(module.head_ema.state_dict()[key], 0.5 * before[key] + 0.5 * student[key])
    assert module.bank is not None and module.bank.size > 0
    assert "codebook" not in module.head_ema.state_dict()


def test_tiny_three_stage_fit_logs_uss_metrics_and_compares_with_kmeans(tmp_path, synth_root, cause_run):
    from dhr.train import run

    metrics = cause_run.metrics
    for stage in ("clusterbook", "head", "probe"):
        assert (cause_run.dir / "checkpoints" / stage / "last.ckpt").is_file()
        assert (cause_run.dir / "checkpoints" / stage / "done").is_file()
    for key in ("val/uss_mIoU", "uss/kmeans_mIoU", "uss/cause_crf_mIoU"):  # the CRF variant is reported too
        assert np.isfinite(metrics[key]) and metrics[key] > 0, key  # background alone matches: never 0
    # k-means is a mean over several seeds, with its spread and best draw
    assert metrics["uss/kmeans_mIoU_std"] >= 0 and metrics["uss/kmeans_mIoU_best"] >= metrics["uss/kmeans_mIoU"]
    assert "k-means on frozen backbone tokens over 3 seeds" in cause_run.stdout
    state = torch.load(cause_run.dir / "checkpoints" / "probe" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("backbone") for k in state["state_dict"])  # the frozen ViT is not saved
    # resuming skips finished stages: nothing is refitted or rewritten
    run_dir = copy_run(cause_run, tmp_path / "run")
    last = run_dir / "checkpoints" / "probe" / "last.ckpt"
    stamp = last.stat().st_mtime_ns
    again = run(compose_cfg("train", [*cause_run.overrides, "ckpt_path=last"], run_dir))
    assert again == {} and last.stat().st_mtime_ns == stamp


def test_features_export_shapes_resume_and_official_format(tmp_path, synth_root):
    from dhr.data.uss import feature_grid
    from dhr.features import export_for_dhr, load_teacher
    from dhr.features import run as export

    module = tiny_module(stage="head", resolution=64)
    official = tmp_path / "CAUSE_SYNTH.pt"
    export_for_dhr(module, official)
    state = torch.load(official, map_location="cpu", weights_only=True)
    assert set(state) == {"decoder", "codebook"} and all(k.startswith("head_ema.") for k in state["decoder"])
    assert not any("codebook" in k for k in state["decoder"])
    vit_file = tmp_path / "vit.pth"
    torch.save(module.backbone.vit.state_dict(), vit_file)  # the same frozen backbone, as a local file
    vit, head = load_teacher(official, {**TINY_VIT, "weights": str(vit_file)})
    x = torch.randn(1, 3, 40, 56)
    module.eval()
    torch.testing.assert_close(head(vit(x)), module.teacher_features(module.tokens(x), dropout=False))  # round trip

    overrides = [f"paths.data_root={synth_root}", f"ckpt={official}", "split=val", "uss_name=CAUSE_test",
                 "backbone.embed_dim=16", "backbone.depth=1", f"backbone.weights={vit_file}", "dataset.generate=null"]
    first = export(compose_cfg("features", overrides, tmp_path / "f1"))
    assert first == {"written": 8, "skipped": 0}
    from PIL import Image

    out = synth_root / "SYNTH" / "validation" / "CAUSE_test"
    sizes = set()
    for f in sorted(out.glob("*.pt")):
        feats = torch.load(f, map_location="cpu", weights_only=True)
        with Image.open(synth_root / "SYNTH" / "validation" / "image" / f"{f.stem}.jpg") as im:
            w, h = im.size
        sizes.add((h, w))
        assert feats.dtype == torch.float16 and feats.shape == (6, *feature_grid(h, w, 8))
        assert feats.shape[-2:] == (-(-2 * h // 8), -(-2 * w // 8))  # ceil8(2H)/8: stride ~4 px for patch 8
    assert len(sizes) > 1  # several image sizes
    assert export(compose_cfg("features", overrides, tmp_path / "f2")) == {"written": 0, "skipped": 8}
    whole = {f.name: f.read_bytes() for f in out.glob("*.pt")}
    # two shards (as two torchrun / srun ranks would run) split the images, none twice, none missing
    sharded = [o for o in overrides if not o.startswith("uss_name")]
    counts = []
    for shard, env in ((0, {"RANK": "0", "WORLD_SIZE": "2"}), (1, {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})):
        with pytest.MonkeyPatch.context() as mp:
            for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
                mp.delenv(key, raising=False)
            for key, value in env.items():
                mp.setenv(key, value)
            counts.append(export(compose_cfg("features", [*sharded, "uss_name=CAUSE_shards"], tmp_path / f"s{shard}")))
    assert counts == [{"written": 4, "skipped": 0}, {"written": 4, "skipped": 0}]
    shards = out.with_name("CAUSE_shards")
    assert {f.name: f.read_bytes() for f in shards.glob("*.pt")} == whole  # byte for byte the 1-process export
    redo = export(compose_cfg("features", [*overrides, "overwrite=true", "num_shards=2", "shard=1"], tmp_path / "f5"))
    assert redo == {"written": 4, "skipped": 0}  # overwrite=true recomputes the shard's finished files too
    from dhr.errors import DHRError

    with pytest.raises(DHRError, match="shard=2 of num_shards=2"):
        export(compose_cfg("features", [*overrides, "num_shards=2", "shard=2"], tmp_path / "f6"))
    other = tiny_module(stage="head", resolution=64)
    torch.nn.init.normal_(other.head_ema.tr.f1.weight)
    export_for_dhr(other, tmp_path / "other.pt")
    with pytest.raises(DHRError, match="holds features of another checkpoint"):
        export(compose_cfg("features", [*overrides[:1], f"ckpt={tmp_path / 'other.pt'}", *overrides[2:]], tmp_path / "f3"))
    for into in ("uss_name=image", "uss_name=mask", f"out_dir={synth_root / 'SYNTH' / 'validation' / 'mask'}"):
        with pytest.raises(DHRError, match="lies inside .*outputs never go"):  # never into the dataset's own folders
            export(compose_cfg("features", [*overrides, into], tmp_path / "f4"))


class DumpWeights(pl.Callback):
    """Saves each rank's trained weights so the test can compare the replicas."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({k: v.cpu() for k, v in pl_module.state_dict().items()}, f"{self.folder}/rank{trainer.global_rank}.pt")


def test_ddp_on_cpu_keeps_replicas_identical(tmp_path, synth_root):
    import pytorch_lightning as pl

    from dhr.data.cause_data import CauseDataModule
    from dhr.data.synthetic import SYNTH_CLASSES

    dataset = {"name": "SYNTH", "classes": list(SYNTH_CLASSES), "splits": {"val": "validation"}, "background_id": 0}
    for stage in ("head", "probe"):
        module = tiny_module(stage=stage, num_classes=9, resolution=64)
        data = CauseDataModule(data_root=str(synth_root), dataset=dataset, train_split="train", val_split=None,
                               crop_type="none", resolution=64, batch_size=8, num_workers=0, image_interp="nearest")
        trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_steps=3, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[DumpWeights(str(tmp_path))])
        start = {k: v.clone() for k, v in module.state_dict().items()}
        trainer.fit(module, datamodule=data)
        r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
        r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
        changed = [k for k in r0 if not torch.equal(r0[k], start[k])]
        assert changed, f"{stage}: nothing trained"
        for key in r0:
            assert torch.equal(r0[key], r1[key]), f"{stage}: replicas differ at {key}"


def test_bad_stage_or_kmeans_seed_count_is_refused_with_the_key_to_fix():
    from dhr.errors import DHRError

    for bad in (0, None, 2.5):
        with pytest.raises(DHRError, match=f"model.report_kmeans_seeds={bad!r}"):
            tiny_module(report_kmeans_seeds=bad)
    with pytest.raises(DHRError, match="model.stage='mediator'"):
        tiny_module(stage="mediator")
