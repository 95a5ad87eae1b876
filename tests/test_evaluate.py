"""dhr.evaluate: official semantics end to end on real VOC/COCO samples and generated folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, compose_cfg

from dhr.data.palette import make_palette
from dhr.errors import DHRError
from dhr.evaluate import run
from dhr.utils.io import read_label_png, save_label_png

VOC_VAL = SHARED_DATA / "voc2012_sample" / "val"


def eval_cfg(tmp_path: Path, *overrides: str):
    return compose_cfg("evaluate", [*overrides, "table=false", f"json={tmp_path / 'run' / 'scores.json'}"], tmp_path / "run")


@pytest.mark.skipif(not VOC_VAL.is_dir(), reason="shared VOC sample not present")
def test_gt_scored_against_itself_is_perfect(tmp_path, capsys):
    cfg = eval_cfg(tmp_path, f"pred={VOC_VAL / 'mask'}", f"gt={VOC_VAL / 'mask'}", "dataset=voc")
    out = run(cfg)
    assert out["mIoU"] == 100.0 and out["mFPR"] == 0.0 and out["mFNR"] == 0.0
    assert out["evaluated"] == out["expected"] == 23
    assert "DHR | mIoU: 100.0%, mFPR: 0.000, mFNR: 0.000" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "scores.json").read_text())
    assert saved["per_class"]["boat"]["IoU"] is None  # absent class → NaN → null


@pytest.mark.skipif(not VOC_VAL.is_dir(), reason="shared VOC sample not present")
def test_gt_as_predictions_and_swapped_folders_are_warned_about(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="dhr.evaluate"):
        run(eval_cfg(tmp_path, f"pred={VOC_VAL / 'mask'}", f"gt={VOC_VAL / 'mask'}", "dataset=voc"))
    assert "equal the GT" in caplog.text and "is pred= the GT folder?" in caplog.text
    preds = tmp_path / "pred"  # a real-looking prediction: the GT with its 255 boundaries filled by background
    preds.mkdir()
    for path in sorted((VOC_VAL / "mask").glob("*.png")):
        label = read_label_png(path).copy()
        label[label == 255] = 0
        save_label_png(preds / path.name, label, make_palette("voc", 21))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dhr.evaluate"):
        run(eval_cfg(tmp_path, f"pred={preds}", f"gt={VOC_VAL / 'mask'}", "dataset=voc"))
    assert "swapped" not in caplog.text and "equal the GT" not in caplog.text  # the right way round: quiet
    with caplog.at_level(logging.WARNING, logger="dhr.evaluate"):
        run(eval_cfg(tmp_path, f"pred={VOC_VAL / 'mask'}", f"gt={preds}", "dataset=voc", "fix=true"))
    assert "pred= and gt= look swapped" in caplog.text


def test_masks_with_more_classes_than_the_dataset_name_the_fix(tmp_path):
    gt = _write_set(tmp_path / "gt", {"a": np.full((4, 4), 7, np.uint8)}, c=9)
    pred = _write_set(tmp_path / "pred", {"a": np.zeros((4, 4), np.uint8)}, c=9)
    with pytest.raises(DHRError, match=r"a.png: GT holds value\(s\) \[.*7\] .*is dataset= the dataset these masks belong to"):
        run(eval_cfg(tmp_path, f"pred={pred}", f"gt={gt}", "dataset=synthetic", "dataset.num_classes=3",
                     "dataset.classes=[background,a,b]", "fix=true"))


@pytest.mark.skipif(not VOC_VAL.is_dir(), reason="shared VOC sample not present")
def test_damaged_predictions_lower_the_score_by_the_exact_amount(tmp_path):
    pred_dir = tmp_path / "pred"
    palette = make_palette("voc", 21)
    ids = sorted(p.stem for p in (VOC_VAL / "mask").glob("*.png"))
    conf_rows = []
    for i in ids:
        gt = read_label_png(VOC_VAL / "mask" / f"{i}.png")
        pred = gt.copy()
        pred[: gt.shape[0] // 4] = 0  # top quarter predicted as background
        pred[pred == 255] = 0
        save_label_png(pred_dir / f"{i}.png", pred, palette)
        conf_rows.append((gt, pred))
    out = run(eval_cfg(tmp_path, f"pred={pred_dir}", f"gt={VOC_VAL / 'mask'}", "dataset=voc", "workers=2"))
    # reference: the release's per-class loop of three masked sums per image
    tp, p, t = np.zeros(21), np.zeros(21), np.zeros(21)
    for gt, pred in conf_rows:
        valid = gt < 255
        for c in range(21):
            p[c] += np.sum((pred == c) & valid)
            t[c] += np.sum((gt == c) & valid)
            tp[c] += np.sum((gt == c) & (pred == c) & valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = 100 * tp / (t + p - tp)
    assert out["mIoU"] == pytest.approx(np.nanmean(iou))
    assert 0 < out["mIoU"] < 100


def _write_set(root: Path, masks: dict[str, np.ndarray], c: int = 3) -> Path:
    palette = make_palette("voc", c)
    for i, m in masks.items():
        save_label_png(root / f"{i}.png", m, palette)
    return root


def test_background_only_images_are_skipped_for_voc_and_kept_for_coco(tmp_path):
    fg = np.array([[0, 15], [15, 255]], np.uint8)
    bg = np.array([[0, 0], [0, 255]], np.uint8)
    gt = _write_set(tmp_path / "gt", {"a": fg, "b": bg}, 81)
    pred = _write_set(tmp_path / "pred", {"a": fg, "b": np.full((2, 2), 15, np.uint8)}, 81)
    voc = run(eval_cfg(tmp_path, f"pred={pred}", f"gt={gt}", "dataset=voc"))
    assert voc["evaluated"] == 1 and voc["skipped_background_only"] == 1 and voc["mIoU"] == 100.0
    coco = run(eval_cfg(tmp_path, f"pred={pred}", f"gt={gt}", "dataset=coco"))
    assert coco["evaluated"] == 2 and coco["mIoU"] < 100.0
    forced = run(eval_cfg(tmp_path, f"pred={pred}", f"gt={gt}", "dataset=coco", "skip_background_only=true"))
    assert forced["evaluated"] == 1


def test_skip_untagged_drops_images_with_empty_xml(tmp_path):
    from dhr.data.tags import write_xml

    split = tmp_path / "VOC2012" / "validation"
    m = np.array([[0, 1], [1, 1]], np.uint8)
    _write_set(split / "mask", {"a": m, "b": m}, 21)
    write_xml(split / "xml" / "a.xml", filename="a.jpg", size=(2, 2), objects=[("aeroplane", (0, 0, 1, 1))])
    write_xml(split / "xml" / "b.xml", filename="b.jpg", size=(2, 2), objects=[])
    pred = _write_set(tmp_path / "pred", {"a": m}, 21)
    out = run(eval_cfg(tmp_path, f"pred={pred}", f"gt={split / 'mask'}", "dataset=voc", "skip_untagged=true"))
    assert out["evaluated"] == 1 and out["missing"] == []


def test_missing_predictions_are_reported_and_fail_the_cli(tmp_path):
    m = np.array([[0, 1], [1, 1]], np.uint8)
    gt = _write_set(tmp_path / "gt", {"a": m, "b": m, "c": m}, 21)
    pred = _write_set(tmp_path / "pred", {"a": m}, 21)
    out = run(eval_cfg(tmp_path, f"pred={pred}", f"gt={gt}", "dataset=voc"))
    assert out["missing"] == ["b", "c"] and out["evaluated"] == 1 and out["expected"] == 3
    cmd = [sys.executable, "-m", "dhr.evaluate", f"pred={pred}", f"gt={gt}", "dataset=voc", "table=false",
           f"json={tmp_path / 'cli' / 'scores.json'}"]
    failed = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 1, failed.stderr
    assert "2 prediction(s) missing" in failed.stderr and "allow_missing=true" in failed.stderr
    assert "evaluated 1 / expected 3 images" in failed.stdout
    allowed = subprocess.run([*cmd, "allow_missing=true"], capture_output=True, text=True, cwd=REPO)
    assert allowed.returncode == 0, allowed.stderr
    assert "DHR | mIoU: 100.0%" in allowed.stdout


def test_release_folder_layout_without_fix_maps_voc_train_to_train_aug(tmp_path):
    m = np.array([[0, 1], [1, 1]], np.uint8)
    gt = _write_set(tmp_path / "data" / "VOC2012" / "train" / "mask", {"a": m}, 21)
    pred = _write_set(tmp_path / "res" / "VOC2012" / "MARS" / "train_aug", {"a": m}, 21)
    out = run(eval_cfg(tmp_path, f"pred={tmp_path / 'res'}", f"gt={tmp_path / 'data'}", "dataset=voc", "fix=false",
                       "split=train", "dataset.splits.train=train", "tag=MARS"))
    assert out["pred"] == str(pred) and out["gt"] == str(gt) and out["mIoU"] == 100.0


def test_size_mismatch_names_the_file(tmp_path):
    gt = _write_set(tmp_path / "gt", {"a": np.ones((4, 4), np.uint8)}, 21)
    pred = _write_set(tmp_path / "pred", {"a": np.ones((4, 5), np.uint8)}, 21)
    with pytest.raises(DHRError, match=r"pred/a\.png: prediction is 5x4 but GT"):
        run(eval_cfg(tmp_path, f"pred={pred}", f"gt={gt}", "dataset=voc", "workers=1"))


def test_rgb_label_images_are_rejected(tmp_path):
    from PIL import Image

    gt = _write_set(tmp_path / "gt", {"a": np.ones((4, 4), np.uint8)}, 21)
    (tmp_path / "pred").mkdir()
    Image.new("RGB", (4, 4), (128, 0, 0)).save(tmp_path / "pred" / "a.png")
    with pytest.raises(DHRError, match="mode 'RGB'"):
        run(eval_cfg(tmp_path, f"pred={tmp_path / 'pred'}", f"gt={gt}", "dataset=voc", "workers=1"))


def test_evaluator_import_path_is_torch_free():
    code = "import sys, dhr.evaluate, dhr.ops.evaluation; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.skipif(not (SHARED_DATA / "coco128_seg").is_dir(), reason="shared COCO sample not present")
def test_coco_sample_scored_against_itself(tmp_path):
    gt = SHARED_DATA / "coco128_seg" / "train2017" / "mask"
    pred = tmp_path / "pred"
    shutil.copytree(gt, pred)
    out = run(eval_cfg(tmp_path, f"pred={pred}", f"gt={gt}", "dataset=coco"))
    assert out["evaluated"] == 128 and out["mIoU"] == 100.0  # COCO keeps its 2 background-only images


def test_a_dataset_mask_folder_given_as_pred_and_another_dataset_are_caught(tmp_path, synth_root, caplog):
    import logging

    gt = synth_root / "SYNTH" / "validation" / "mask"
    preds = tmp_path / "preds"  # a prediction folder: the GT shifted by one class, no 255 anywhere (nothing to sniff)
    preds.mkdir()
    for path in sorted(gt.glob("*.png")):
        save_label_png(preds / path.name, (read_label_png(path) + 1) % 9, make_palette("voc", 9))
    with caplog.at_level(logging.WARNING, logger="dhr.evaluate"):
        run(eval_cfg(tmp_path, f"paths.data_root={synth_root}", f"pred={gt}", f"gt={preds}", "fix=true",
                     "dataset.generate=null"))
    assert "is a dataset's ground-truth folder (beside image/)" in caplog.text and "look swapped" in caplog.text
    with pytest.raises(DHRError, match=r"SYNTH.json lists 9 classes .* but dataset=VOC2012 has 21; pass the dataset= of"):
        run(eval_cfg(tmp_path, f"pred={preds}", f"gt={gt}", "fix=true", "dataset=voc"))
