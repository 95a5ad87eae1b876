"""One process against ``trainer=ddp_cpu`` (2 gloo processes) with the same global batch, per stage.

    python scripts/ddp_parity.py [--stages segmentation cam dhr cause] [--steps 3] [--dropout] [--keep DIR]

Trains each stage twice on a generated tiny synthetic set (24 train / 8 val images, batch 4,
crop 48) through the real CLI, and prints the largest weight difference of the final checkpoints
and the val metrics of both runs (the DHR rows add the share of pixels each relabelling step
changed, averaged over all ranks). Dropout is off unless ``--dropout``: its draws are per process.
The tolerances the tests hold to, and why they are not all zero, are in docs/ddp.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

TINY = {"num_train": 24, "num_val": 8, "min_size": 56, "max_size": 72, "seed": 0}
CAUSE = ["model=cause", "backbone.embed_dim=16", "backbone.depth=1", "model.num_concepts=16", "model.reduced_dim=8",
         "model.projection_dim=16", "model.ffn_dim=16", "model.resolution=64", "model.bank_length=4",
         "data.batch_size=4", "model.report_kmeans_seeds=1", "stage_epochs={clusterbook:1,head:1,probe:1}"]


def tiny_data(root: Path) -> tuple[Path, Path]:
    """The synthetic set, erased-minor seeds and random 6-d USS maps (patch 8) for ``model=dhr``."""
    from dhr.data.synthetic import generate, write_erased_seeds
    from dhr.data.uss import feature_grid
    from dhr.utils.io import read_rgb

    data, seeds = root / "data", root / "wss" / "SYNTH" / "ERASED" / "train"
    generate(data, "SYNTH", progress=False, **TINY)
    write_erased_seeds(data / "SYNTH" / "train" / "mask", seeds)
    uss = data / "SYNTH" / "train" / "CAUSE_PARITY"
    uss.mkdir()
    generator = torch.Generator().manual_seed(0)
    for image in sorted((data / "SYNTH" / "train" / "image").glob("*")):
        with read_rgb(image) as im:
            grid = feature_grid(im.height, im.width, 8)
        torch.save(torch.randn(6, *grid, generator=generator).half(), uss / f"{image.stem}.pt")
    (uss / "manifest.json").write_text(json.dumps({"patch": 8}))
    return data, seeds


def stage_overrides(stage: str, data: Path, seeds: Path, steps: int, dropout: bool) -> list[str]:
    gen = ",".join(f"{k}:{v}" for k, v in TINY.items())
    common = [f"paths.data_root={data}", f"dataset.generate={{{gen}}}", "recipe.crop_size=48", "recipe.resize_long=[40,64]",
              "recipe.batch_size=4", "recipe.num_workers=0", "recipe.max_epochs=1", "recipe.val_every=1",
              f"trainer.limit_train_batches={steps}", "trainer.enable_model_summary=false", "evaluate_after_fit=false",
              "callbacks.progress_bar.terminal=false"]
    deeplab = ["model.aspp_channels=16", "model.low_level_channels=8", "infer.scales=[1.0]"]
    if not dropout:
        deeplab.append("model.dropout=[0.0,0.0,0.0]")
    return {"segmentation": [*common, *deeplab],
            "cam": [*common, "model=cam"],
            "dhr": [*common, *deeplab, "experiment=synthetic_dhr", "wss=folder", f"wss.path={seeds}",
                    "model.dhr.uss_name=CAUSE_PARITY", "crf.processes=1", "model.dhr.tau=0.0"],
            "cause": [*common, *CAUSE]}[stage]


def train(out: Path, overrides: list[str]) -> float:
    start = time.time()
    res = subprocess.run([sys.executable, "-m", "dhr.train", *overrides, f"hydra.run.dir={out}"],
                         capture_output=True, text=True, cwd=REPO)
    if res.returncode:
        sys.exit(f"{out.name} failed:\n{res.stderr[-3000:]}")
    return time.time() - start


def last_metrics(run: Path) -> dict[str, float]:
    last: dict[str, float] = {}
    for f in sorted(run.rglob("metrics.csv")):
        for row in csv.DictReader(f.open()):
            last.update({k: float(v) for k, v in row.items() if v and k.startswith(("val/", "train/dhr_changed"))})
    return last


def weight_gap(one: Path, two: Path) -> float:
    gaps = []
    for ckpt in sorted(one.rglob("last.ckpt")):
        a = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        b = torch.load(two / ckpt.relative_to(one), map_location="cpu", weights_only=True)["state_dict"]
        gaps += [(a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point()]
    return max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["segmentation", "cam", "dhr", "cause"],
                        choices=["segmentation", "cam", "dhr", "cause"])
    parser.add_argument("--steps", type=int, default=3, help="training steps (per stage for CAUSE)")
    parser.add_argument("--dropout", action="store_true", help="keep DeepLabv3+'s dropout (drawn per process)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="dhr-ddp-parity-"))
    root.mkdir(parents=True, exist_ok=True)
    data, seeds = tiny_data(root) if not (root / "data").exists() else (root / "data", root / "wss/SYNTH/ERASED/train")
    for stage in args.stages:
        overrides = stage_overrides(stage, data, seeds, args.steps, args.dropout)
        one, two = root / f"{stage}_1proc", root / f"{stage}_ddp"
        t1, t2 = train(one, overrides), train(two, [*overrides, "trainer=ddp_cpu"])
        a, b = last_metrics(one), last_metrics(two)
        print(f"\n{stage}: {args.steps} step(s), 1 process {t1:.0f} s, 2 processes {t2:.0f} s; "
              f"largest weight difference {weight_gap(one, two):.3g}")
        for key in sorted(a):
            print(f"  {key:28s} 1 process {a[key]:10.5f}   2 processes {b.get(key, float('nan')):10.5f}   "
                  f"gap {abs(a[key] - b.get(key, float('nan'))):.5f}")


if __name__ == "__main__":
    main()
