"""DDP that means the same: ``trainer=ddp_cpu`` (2 gloo processes) against 1 process with the same
global batch, per stage, with the tolerances of docs/ddp.md.

What makes them equal: each rank reads its contiguous share of the 1-process global batch
(``EpochShuffle``), BatchNorm statistics are those of the global batch (``AllReduceBatchNorm``),
validation covers every image once and scores each at its own size, confusion matrices are summed
over ranks. What still differs, and why the tolerances are not all zero: the loss is a mean per
process (images with many ignored pixels weigh more under DDP, as in the release), dropout and
CAUSE's token samples are drawn per process, and CAUSE's concept bank is per process.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DDP_FORK, dhr_overrides, tiny_cause_overrides, tiny_train_overrides, without

from dhr.data.sampler import EpochShuffle, EvalShard

NO_DROPOUT = "model.dropout=[0.0,0.0,0.0]"  # dropout draws are per process: off where the test wants equality


def test_each_rank_reads_its_share_of_the_one_process_batches():
    n, batch = 22, 4
    one = list(EpochShuffle(n, seed=3, batch_size=batch))
    ranks = [EpochShuffle(n, seed=3, batch_size=batch, rank=r, world=2) for r in range(2)]
    shares = [list(r) for r in ranks]
    assert [len(s) for s in shares] == [len(r) for r in ranks] == [10, 10]  # 5 whole global batches of 4
    for step in range(5):
        assert shares[0][2 * step:2 * step + 2] + shares[1][2 * step:2 * step + 2] == one[4 * step:4 * step + 4]
    for r in ranks:
        r.set_epoch(1)
    epoch1 = EpochShuffle(n, seed=3, batch_size=batch)
    epoch1.set_epoch(1)
    assert list(ranks[0])[:2] + list(ranks[1])[:2] == list(epoch1)[:4] != one[:4]  # the index carries the epoch
    resumed = EpochShuffle(n, seed=3, batch_size=batch, rank=1, world=2)
    resumed.epoch, resumed.resume = 1, (1, 4)  # a requeued rank 1 after 2 steps of epoch 1
    assert list(resumed) == list(ranks[1])[4:]
    with pytest.raises(ValueError, match="not divisible"):
        EpochShuffle(n, seed=0, batch_size=5, world=2)


def test_evaluation_shards_cover_every_image_once():
    for n in (1, 7, 8):
        shards = [list(EvalShard(n, rank=r, world=2)) for r in range(2)]
        assert sorted(shards[0] + shards[1]) == list(range(n))


def test_a_score_does_not_depend_on_the_images_it_is_batched_with():
    from dhr.ops.inference import labels_per_size

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def scores(x: torch.Tensor) -> torch.Tensor:  # global pooling, as ASPP's: padding would shift every pixel
        y = conv(x)
        return y + y.mean((2, 3), keepdim=True) * 5

    a, b = torch.randn(1, 3, 20, 30), torch.randn(1, 3, 32, 24)
    padded = torch.zeros(2, 3, 32, 30)
    padded[0, :, :20, :30], padded[1, :, :32, :24] = a[0], b[0]
    labels = labels_per_size(scores, padded, torch.tensor([[20, 30], [32, 24]]), fill=255)
    assert torch.equal(labels[0, :20, :30], scores(a).argmax(1)[0])
    assert torch.equal(labels[1, :32, :24], scores(b).argmax(1)[0])
    assert (labels[0, 20:] == 255).all() and (labels[1, :, 24:] == 255).all()
    assert not torch.equal(scores(padded[:1]).argmax(1)[0, :20, :30], labels[0, :20, :30])  # what padding did


def _batchnorm_rank(rank: int, full: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    from dhr.ops.sync_batchnorm import AllReduceBatchNorm

    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = AllReduceBatchNorm(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = full[rank * 3:(rank + 1) * 3].clone().requires_grad_(True)  # 3 of the 6 images
    y = bn(x)
    (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
    grads = [p.grad.clone() for p in (bn.weight, bn.bias)]
    for g in grads:
        dist.all_reduce(g)  # what DDP does with parameter gradients (before its division by 2)
    torch.save({"y": y.detach(), "dx": x.grad, "dw": grads[0], "db": grads[1], "mean": bn.running_mean,
                "var": bn.running_var}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_allreduce_batchnorm_is_batchnorm_of_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    full = torch.randn(6, 3, 5, 7) * 3 + 2
    mp.start_processes(_batchnorm_rank, args=(full, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = full.clone().requires_grad_(True)
    y = bn(x)
    (y * torch.cat([torch.arange(y[:3].numel()).view_as(y[:3]).sin()] * 2)).sum().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    tol = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), x.grad, **tol)
    for r in ranks:
        torch.testing.assert_close(r["dw"], bn.weight.grad, **tol)
        torch.testing.assert_close(r["db"], bn.bias.grad, **tol)
        torch.testing.assert_close(r["mean"], bn.running_mean, **tol)
        torch.testing.assert_close(r["var"], bn.running_var, **tol)


# -- whole stages -----------------------------------------------------------------------------------

def _train(out: Path, overrides: list[str]) -> Path:
    from conftest import compose_cfg

    from dhr.train import run

    shutil.rmtree(out, ignore_errors=True)
    run(compose_cfg("train", overrides, out))
    return out


def _one_and_two(tmp_path: Path, overrides: list[str]) -> tuple[Path, Path]:
    """The same run in one process and in two (trainer=ddp_cpu with forked ranks), both in this process."""
    base = [o for o in overrides if not o.startswith("trainer.limit_val_batches")]
    return _train(tmp_path / "one", base), _train(tmp_path / "ddp", [*base, *DDP_FORK])


def _val(run: Path) -> dict[str, float]:
    """The last logged value of every val/ and train/ epoch metric of the run (one CSV: rank 0 logs alone)."""
    files = list(run.rglob("metrics.csv"))
    assert len(files) == 1, files
    last: dict[str, float] = {}
    for row in csv.DictReader(files[0].open()):
        last.update({k: float(v) for k, v in row.items() if v and k.startswith(("val/", "train/dhr", "train/loss_cls"))})
    return last


def _weights_gap(a: Path, b: Path) -> float:
    one = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    two = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    assert one.keys() == two.keys()
    return max((one[k] - two[k]).abs().max().item() for k in one if one[k].is_floating_point())


def test_segmentation_step_and_its_validation_are_those_of_one_process(tmp_path, synth_root):
    one, two = _one_and_two(tmp_path, [*tiny_train_overrides(synth_root), NO_DROPOUT, "trainer.limit_train_batches=1"])
    assert _weights_gap(one / "checkpoints" / "last.ckpt", two / "checkpoints" / "last.ckpt") < 1e-4
    assert _val(two) == pytest.approx(_val(one), abs=1e-6)  # every val image once, scored alone, states summed
    # rank 0 alone writes: one checkpoint folder, one log, one prediction folder and score report, as 1 process
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(two / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 1
    import numpy as np
    from PIL import Image

    pngs = sorted((one / "predictions" / "validation").glob("*.png"))
    assert [p.name for p in pngs] == sorted(p.name for p in (two / "predictions" / "validation").glob("*.png"))
    same = [np.mean(np.asarray(Image.open(p)) == np.asarray(Image.open(two / "predictions" / "validation" / p.name)))
            for p in pngs]
    assert len(pngs) == 8 and min(same) > 0.99  # weights within 1e-4: a few pixels of the 2-scale argmax may flip
    assert (two / "predictions" / "validation_scores.json").is_file()


def test_cam_training_is_that_of_one_process(tmp_path, synth_root):
    overrides = without(tiny_train_overrides(synth_root), "model.")
    one, two = _one_and_two(tmp_path, [*overrides, "model=cam", "evaluate_after_fit=false"])
    assert _weights_gap(one / "checkpoints" / "last.ckpt", two / "checkpoints" / "last.ckpt") < 1e-5  # 3 steps


def test_dhr_relabelling_is_that_of_one_process(tmp_path, synth_root, dhr_inputs):
    seeds, _ = dhr_inputs
    one, two = _one_and_two(tmp_path, [*dhr_overrides(synth_root, seeds), NO_DROPOUT, "trainer.limit_train_batches=1",
                                       "evaluate_after_fit=false"])
    a, b = _val(one), _val(two)
    for key in ("train/dhr_changed_step1", "train/dhr_changed_step23"):  # the share of pixels each step relabelled
        assert b[key] == pytest.approx(a[key], abs=1e-4), key
    assert abs(b["val/mIoU"] - a["val/mIoU"]) < 0.5  # points; the per-process loss mean moves the step a little


def test_cause_under_ddp_stays_close_to_one_process(tmp_path, synth_root):
    overrides = [*tiny_cause_overrides(synth_root), "evaluate_after_fit=false"]
    one, two = _one_and_two(tmp_path, overrides)
    for stage in ("clusterbook", "head", "probe"):
        assert (two / "checkpoints" / stage / "done").is_file()
    last = {}
    for run in (one, two):  # the final (probe) validation
        rows = [row for f in sorted(run.rglob("metrics.csv")) for row in csv.DictReader(f.open())]
        last[run.name] = {k: float(v) for row in rows for k, v in row.items() if v and k.startswith("val/")}
    for key in ("val/uss_mIoU", "val/linear_mIoU"):  # points; token samples and concept bank are per process
        assert abs(last["ddp"][key] - last["one"][key]) < 3.0, (key, last)


def test_prediction_is_sharded_over_processes_without_a_missing_or_changed_image(tmp_path, synth_root, deeplab_run):
    from conftest import cli, compose_cfg, predict_overrides

    from dhr.predict import run as predict

    overrides = predict_overrides(synth_root, deeplab_run.ckpt, "split=val", "evaluate=false")
    one = predict(compose_cfg("predict", [*overrides, f"out_dir={tmp_path / 'one'}"], tmp_path / "p1"))
    res = cli("dhr.predict", *overrides, *DDP_FORK, f"out_dir={tmp_path / 'two'}", f"hydra.run.dir={tmp_path / 'p2'}",
              "callbacks.progress_bar.terminal=false")
    assert res.rc == 0, res.tail()
    assert one["written"] == 8 and "wrote 8 label PNGs" in (tmp_path / "p2" / "predict.log").read_text()
    pngs = sorted((tmp_path / "one").glob("*.png"))
    assert [p.name for p in pngs] == sorted(p.name for p in (tmp_path / "two").glob("*.png"))
    assert all(p.read_bytes() == (tmp_path / "two" / p.name).read_bytes() for p in pngs)  # eval mode: the same maps
    manifest = __import__("json").loads((tmp_path / "two" / ".predict.json").read_text())
    assert manifest.get("finished")  # rank 0 marked the folder finished, after both ranks wrote
