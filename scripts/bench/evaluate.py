"""Benchmark: the whole ``python -m dhr.evaluate`` process against the release's evaluator loop.

The baseline is the official evaluator's method, measured in this same run: decode each pair
in one process, then per class three masked sums (P, T, TP) accumulated in float32. Ours is
timed as a subprocess, start-up included. Both must give the same numbers.

    python scripts/bench/evaluate.py [--images 1449] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dhr.data.palette import make_palette
from dhr.utils.io import save_label_png

REPO = Path(__file__).resolve().parents[2]

NUM_CLASSES = 21


def make_masks(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """VOC-like 500x375 GT (blobs of 1-3 classes on background, 255 borders) and noisy predictions."""
    gt_dir, pred_dir = root / "gt", root / "pred"
    palette = make_palette("voc", NUM_CLASSES)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(n):
        gt = np.zeros((375, 500), np.uint8)
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.uniform(50, 325), rng.uniform(50, 450), rng.uniform(30, 150)
            d = np.hypot(yy - cy, xx - cx)
            gt[d < r] = rng.integers(1, NUM_CLASSES)
            gt[(d >= r) & (d < r + 3)] = 255
        pred = gt.copy()
        shift = int(rng.integers(-12, 13))
        pred = np.roll(pred, shift, axis=1)
        pred[pred == 255] = 0
        noise = rng.random(pred.shape) < 0.02
        pred[noise] = rng.integers(0, NUM_CLASSES, int(noise.sum()))
        save_label_png(gt_dir / f"{i:06d}.png", gt, palette)
        save_label_png(pred_dir / f"{i:06d}.png", pred, palette)
    return gt_dir, pred_dir


def baseline(gt_dir: Path, pred_dir: Path) -> tuple[float, float, float]:
    """The release's per-class NumPy loop (three masked sums per class per image), one process."""
    p = np.zeros(NUM_CLASSES, np.float32)
    t = np.zeros(NUM_CLASSES, np.float32)
    tp = np.zeros(NUM_CLASSES, np.float32)
    for gt_path in sorted(gt_dir.glob("*.png")):
        gt = np.array(Image.open(gt_path))
        pred = np.array(Image.open(pred_dir / gt_path.name))
        valid = gt != 255
        correct = (pred == gt) * valid
        for c in range(NUM_CLASSES):
            p[c] += np.sum((pred == c) * valid)
            t[c] += np.sum((gt == c) * valid)
            tp[c] += np.sum((gt == c) * correct)
    union = t + p - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union * 100, np.nan)
        fpr = np.where(union > 0, (p - tp) / union, np.nan)
        fnr = np.where(union > 0, (t - tp) / union, np.nan)
    return float(np.nanmean(iou)), float(np.nanmean(fpr)), float(np.nanmean(fnr))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1449)
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings for each side")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes for dhr.evaluate (default: all cores)")
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        gt_dir, pred_dir = make_masks(root, args.images)
        print(f"generated {args.images} VOC-like 500x375 mask pairs in {time.perf_counter() - t0:.1f} s")

        t_base = float("inf")
        for _ in range(args.repeats):  # best of N for both sides: the machine is shared
            t0 = time.perf_counter()
            ref = baseline(gt_dir, pred_dir)
            t_base = min(t_base, time.perf_counter() - t0)

        cmd = [sys.executable, "-m", "dhr.evaluate", f"pred={pred_dir}", f"gt={gt_dir}", "dataset=voc", "table=false",
               "skip_background_only=false", f"json={root / 'scores.json'}"]
        if args.workers:
            cmd.append(f"workers={args.workers}")
        t_ours = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
            t_ours = min(t_ours, time.perf_counter() - t0)
        ours = json.loads((root / "scores.json").read_text())

    same = np.allclose([ours["mIoU"], ours["mFPR"], ours["mFNR"]], ref, rtol=1e-5, atol=1e-6)
    n = args.images
    print(f"cores: {os.cpu_count()}")
    print(f"best of {args.repeats} runs each")
    print(f"baseline (release per-class loop, 1 process): {t_base:7.2f} s  {n / t_base:8.1f} images/s")
    print(f"python -m dhr.evaluate (whole process):       {t_ours:7.2f} s  {n / t_ours:8.1f} images/s")
    print(f"speed-up: {t_base / t_ours:.1f}x   same numbers: {same} "
          f"(mIoU {ours['mIoU']:.4f} vs {ref[0]:.4f}, mFPR {ours['mFPR']:.5f} vs {ref[1]:.5f}, mFNR {ours['mFNR']:.5f} vs {ref[2]:.5f})")
    if args.json:
        args.json.write_text(json.dumps({"images": n, "baseline_s": t_base, "dhr_evaluate_s": t_ours,
                                         "speedup": t_base / t_ours, "same_numbers": bool(same)}, indent=2) + "\n")
    if not same:
        sys.exit("numbers differ")


if __name__ == "__main__":
    main()
