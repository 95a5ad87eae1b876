"""Which frozen backbone groups the synthetic classes best? k-means on its maps, scored against GT.

    python scripts/uss_backbones.py [images=60] [seeds=3] [dataset=synthetic_quick]

For each candidate USS backbone (a frozen map: the tiny random ViT's tokens, each stride-4/8 map
of the ImageNet EfficientNet-Lite0 at input scales 1 and 2, and the RGB colour itself), runs
spherical k-means with as many clusters as classes on the validation images and prints the
Hungarian-matched mIoU / pixel accuracy (best of ``seeds``) and the family merges of that
clustering (``dhr.ops.hungarian.family_merges``). The clusters see no label; GT only scores them.
This chooses the USS backbone of the synthetic default (docs/cause.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from dhr.conf_path import CONFIG_DIR
from dhr.models.frozen import frozen_from_cfg
from dhr.ops.hungarian import family_merges, hungarian_scores
from dhr.ops.kmeans import spherical_kmeans
from dhr.utils.imagenet import normalize_rgb
from dhr.utils.io import read_label_png


def backbone_cfg(option: str, **extra: object) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"backbone={option}"])
    return {**OmegaConf.to_container(cfg.backbone, resolve=True), **extra}


def score(net: torch.nn.Module | None, root: Path, ids: list[str], scale: float, n: int, families: list[list[int]],
          seeds: int) -> tuple[float, float, object]:
    feats, labels = [], []
    for image_id in ids:
        image = Image.open(root / "image" / f"{image_id}.jpg").convert("RGB")
        label = torch.from_numpy(read_label_png(root / "mask" / f"{image_id}.png").astype(np.int64))
        w, h = image.size
        if net is None:  # the colour itself
            x = torch.from_numpy(normalize_rgb(image)).permute(2, 0, 1)[None]
        else:
            p = net.patch_size
            size = (max(p, round(w * scale / p) * p), max(p, round(h * scale / p) * p))
            x = torch.from_numpy(normalize_rgb(image.resize(size, Image.BILINEAR))).permute(2, 0, 1)[None]
            with torch.no_grad():
                x = net(x)
        f = F.interpolate(x.float(), size=label.shape, mode="bilinear", align_corners=False)[0]
        feats.append(f.permute(1, 2, 0).reshape(-1, f.shape[0])[::7])
        labels.append(label.reshape(-1)[::7])
    X, Y = torch.cat(feats), torch.cat(labels)
    keep = Y != 255
    X, Y = X[keep], Y[keep]
    best = None
    for seed in range(seeds):
        centroids = spherical_kmeans(X, n, seed=seed)
        assign = (F.normalize(X, dim=1) @ F.normalize(centroids, dim=1).T).argmax(1)
        counts = torch.bincount(Y * n + assign, minlength=n * n).view(n, n).numpy()
        s = hungarian_scores(counts.T)
        if best is None or s.miou > best[0]:
            best = (s.miou, s.pixel_accuracy, family_merges(counts, families))
    return best


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={args.get('dataset', 'synthetic_quick')}"])
    classes = list(cfg.dataset.classes)
    families = [[classes.index(c) for c in fam] for fam in cfg.dataset.families]
    root = Path(cfg.paths.data_root) / cfg.dataset.name / cfg.dataset.splits.val
    if not root.is_dir():
        sys.exit(f"{root}: not generated yet; run python -m dhr.pipeline dataset={args.get('dataset', 'synthetic_quick')} "
                 "pipeline.to=seeds (or any dhr.train on it) first")
    ids = sorted(p.stem for p in (root / "image").glob("*.jpg"))[: int(args.get("images", 60))]
    seeds = int(args.get("seeds", 3))
    candidates: list[tuple[str, torch.nn.Module | None, float]] = [("RGB colour", None, 1.0)]
    vit = frozen_from_cfg(backbone_cfg("vit_tiny"))
    candidates += [("tiny random ViT tokens (patch 8)", vit, 1.0), ("tiny random ViT tokens (patch 8)", vit, 2.0)]
    for level, label in ((0, "C2 stride 4, 24 ch"), (1, "C3 stride 8, 40 ch"), (2, "C4 at OS 8, 112 ch"),
                         (3, "C5 at OS 8, 320 ch")):
        net = frozen_from_cfg(backbone_cfg("efficientnet_lite0_uss", uss_level=level))
        candidates += [(f"EfficientNet-Lite0 {label}", net, 1.0), (f"EfficientNet-Lite0 {label}", net, 2.0)]
    print(f"k-means with {len(classes)} clusters on {len(ids)} {cfg.dataset.name} validation images (best of {seeds} seeds)")
    print("| features | input scale | mIoU | pAcc | families within | across | apart |\n|---|---|---|---|---|---|---|")
    for name, net, scale in candidates:
        miou, pacc, fam = score(net, root, ids, scale, len(classes), families, seeds)
        print(f"| {name} | {scale:g} | {miou:.1f} | {pacc:.1f} | {fam.within:.2f} | {fam.across:.2f} | {fam.families_apart:.2f} |",
              flush=True)


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit(print(__doc__))
    main()
