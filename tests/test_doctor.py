"""dhr.doctor on converted and damaged trees: counts, class frequencies, every problem, exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_SYNTH
from official_formats import make_voc
from PIL import Image

from dhr.doctor import run
from dhr.utils.cli import compose_config


def doctor(*overrides: str) -> dict:
    return run(compose_config("doctor", list(overrides)))


@pytest.fixture()
def voc_tree(tmp_path):
    make_voc(tmp_path / "dl")
    from dhr.prepare import run as prepare

    prepare(compose_config("prepare", ["dataset=voc", f"src={tmp_path / 'dl'}", f"sbd={tmp_path / 'dl/benchmark_RELEASE'}",
                                       f"out={tmp_path / 'data'}", "workers=2"]))
    return tmp_path / "data"


def test_a_converted_tree_is_healthy_with_counts_and_class_frequencies(voc_tree, capsys):
    out = doctor("dataset=voc", f"paths.data_root={voc_tree}")
    assert out["ok"]
    splits = {s["split"]: s for s in out["splits"]}
    assert set(splits) == {"test", "train_aug", "validation"}
    assert splits["train_aug"]["images"] == splits["train_aug"]["masks"] == splits["train_aug"]["tagged"] == 4
    assert splits["test"]["masks"] == 0 and splits["test"]["untagged"] == 1  # t has no objects
    assert splits["validation"]["tag_images"] == {"bird": 1, "cat": 1, "tvmonitor": 1}
    assert splits["validation"]["mask_images"]["background"] == 2
    assert sum(splits["validation"]["mask_pixels"].values()) == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "healthy: VOC2012, 3 split(s)" in printed and "(never present)" in printed


def test_every_problem_of_every_split_is_listed(voc_tree, tmp_path):
    root = voc_tree / "VOC2012"
    (root / "validation" / "mask" / "c.png").unlink()                                   # missing mask
    Image.new("P", (3, 3)).save(root / "validation" / "mask" / "zz.png")               # orphan
    (root / "train_aug" / "image" / "b.jpg").write_bytes(b"not a jpeg")               # unreadable image
    e_size = Image.open(root / "train_aug" / "image" / "e.jpg").size
    Image.fromarray(np.full(e_size[::-1], 30, dtype=np.uint8), mode="L").save(root / "train_aug" / "mask" / "e.png")  # out-of-range ids
    Image.new("RGB", (8, 8)).save(root / "train_aug" / "image" / "a.png")               # a second file for id a
    (root / "validation" / "xml" / "d.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    report = tmp_path / "doctor.json"
    out = doctor("dataset=voc", f"paths.data_root={voc_tree}", f"json={report}")
    assert not out["ok"] and json.loads(report.read_text())["ok"] is False
    errors = "\n".join(e for s in out["splits"] for e in s["errors"])
    warnings = "\n".join(w for s in out["splits"] for w in s["warnings"])
    assert "no mask for image c.jpg" in errors
    assert "b.jpg: cannot decode image" in errors
    assert "e.png: values [30] are not class ids 0..20 or 255" in errors
    assert "id 'a' has 2 files (a.jpg, a.png)" in errors
    assert "unknown class name(s) ['unicorn']" in errors
    assert "1 mask file(s) without an image, e.g. ['zz']" in warnings


def test_a_missing_or_misspelled_split_is_an_error(voc_tree):
    out = doctor("dataset=voc", f"paths.data_root={voc_tree}", "splits=[valdation]")
    assert not out["ok"] and "valdation/image: split folder not found" in out["splits"][0]["errors"][0]


def test_seeds_and_uss_features_are_checked(voc_tree, tmp_path):
    import torch

    from dhr.utils.grid import feature_grid

    seeds = tmp_path / "seeds"
    for p in sorted((voc_tree / "VOC2012" / "train_aug" / "mask").glob("*.png"))[:3]:
        seeds.mkdir(exist_ok=True)
        (seeds / p.name).write_bytes(p.read_bytes())
    feats = voc_tree / "VOC2012" / "train_aug" / "CAUSE"
    feats.mkdir()
    for p in sorted((voc_tree / "VOC2012" / "train_aug" / "image").glob("*.jpg")):
        w, h = Image.open(p).size
        gh, gw = feature_grid(h, w, 14)
        torch.save(torch.zeros(4, gh, gw + (p.stem == "b"), dtype=torch.float16), feats / f"{p.stem}.pt")
    out = doctor("dataset=voc", f"paths.data_root={voc_tree}", "wss=folder", f"wss.path={seeds}", "uss=CAUSE",
                 "splits=[train]", "uss_dim=4")
    (split,) = out["splits"]
    assert split["seeds"] == 3 and split["features"] == 4
    errors = "\n".join(split["errors"])
    assert "no seed for image f.jpg" in errors and errors.count("USS features are") == 1 and "b.pt" in errors
    # without uss_dim the first file sets the channels: a file of another export (5-d) is found before training
    first = sorted(feats.glob("*.pt"))[0]
    other = next(p for p in sorted(feats.glob("*.pt")) if p.stem not in (first.stem, "b"))
    torch.save(torch.zeros(5, *torch.load(other, weights_only=True).shape[1:], dtype=torch.float16), other)
    out = doctor("dataset=voc", f"paths.data_root={voc_tree}", "uss=CAUSE", "splits=[train]")
    errors = "\n".join(out["splits"][0]["errors"])
    assert f"{other.name}: USS features are (5," in errors and errors.count("USS features are") == 2


@pytest.mark.slow
def test_the_cli_exits_1_on_errors_and_0_when_healthy(tmp_path):
    from dhr.data.synthetic import generate

    generate(tmp_path, "SYNTH", progress=False, **TINY_SYNTH)
    gen = ",".join(f"{k}:{v}" for k, v in TINY_SYNTH.items())
    cmd = [sys.executable, "-m", "dhr.doctor", "dataset=synthetic", f"paths.data_root={tmp_path}", f"dataset.generate={{{gen}}}"]
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    next((tmp_path / "SYNTH" / "validation" / "mask").glob("*.png")).unlink()
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 1 and "1 error(s): SYNTH" in bad.stdout


def test_a_voc_release_goes_through_prepare_doctor_and_the_pipeline(voc_tree, tmp_path):
    """The official-format fixture, converted and checked, trains every stage for one epoch and is scored."""
    from conftest import compose_cfg, tiny_pipeline_overrides

    from dhr.pipeline import run as pipeline

    assert doctor("dataset=voc", f"paths.data_root={voc_tree}")["ok"]
    overrides = tiny_pipeline_overrides(voc_tree, "+pipeline.expected.seeds={metric:mIoU,value:100.0,tolerance:0.5,source:fixture}",
                                        "+pipeline.expected.final={metric:mIoU,value:50.0,tolerance:50.0,source:fixture}",
                                        dataset="voc", drop=("trainer.limit_",),
                                        add=("recipe.batch_size=2", "data.val_batch_size=2"))
    report = pipeline(compose_cfg("pipeline", overrides, tmp_path / "pipe"))
    assert report["expected"]["seeds"]["status"] == "outside" and report["expected"]["final"]["status"] == "within"
    assert report["first_departure"] == "seeds"
    assert "first stage outside its tolerance: seeds" in (tmp_path / "pipe" / "report.md").read_text()
    rows = report["rows"]
    assert rows["seeds"]["split"] == "train" and rows["seeds"]["images"] == 4
    assert rows["final"]["split"] == "val" and rows["final"]["images"] == 2
    assert all(0.0 <= row["mIoU"] <= 100.0 for row in rows.values())
