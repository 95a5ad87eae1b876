"""Control "USS" features for the synthetic set, to tell DHR's algorithm from its features.

    python scripts/control_features.py --kind colour|oracle [--data-root DIR] [--dataset SYNTH] [--split train] [--patch 8]

Saved like ``dhr.features`` output (fp16 maps on the exporter's grid ceil_p(int(2H))/p x
ceil_p(int(2W))/p, a manifest with the patch) under ``{split}/COLOUR`` or ``{split}/ORACLE``:

* ``colour``: the ImageNet-normalised RGB, area-averaged. Label-free; the "high-level" cue of
  this set: it groups each colour family and cannot split stripes from checks (Step 3's job).
* ``oracle``: the one-hot GT, area-averaged, plus noise 0.05. **Uses GT: a diagnostic of what
  the relabelling does with ideal features, never a training input for reported results.**

Use with ``scripts/relabel_diagnostics.py uss=CAUSE,COLOUR,ORACLE``.
"""

from __future__ import annotations

import argparse
import io
import os
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dhr.data.synthetic import SYNTH_CLASSES
from dhr.data.uss import feature_grid
from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD
from dhr.utils.io import atomic_write_bytes, atomic_write_json, read_label_png, read_rgb


def colour_map(split_dir: Path, stem: str, path: Path, patch: int) -> torch.Tensor:
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    image = (np.asarray(read_rgb(path), dtype=np.float32) / 255.0 - mean) / std
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    return F.adaptive_avg_pool2d(x, feature_grid(x.shape[2], x.shape[3], patch))[0]


def oracle_map(split_dir: Path, stem: str, path: Path, patch: int, num_classes: int = len(SYNTH_CLASSES)) -> torch.Tensor:
    gt = torch.from_numpy(read_label_png(split_dir / "mask" / f"{stem}.png").astype(np.int64)).clamp(max=num_classes)
    onehot = F.one_hot(gt, num_classes + 1)[..., :num_classes].permute(2, 0, 1).float()[None]
    feat = F.adaptive_avg_pool2d(onehot, feature_grid(gt.shape[0], gt.shape[1], patch))[0]
    g = torch.Generator().manual_seed(zlib.crc32(stem.encode()))
    return feat + 0.05 * torch.randn(feat.shape, generator=g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("DHR_DATA", "data"))
    parser.add_argument("--dataset", default="SYNTH", help="the generated set's folder (SYNTH, SYNTH_QUICK, SYNTH_PAPER)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--kind", choices=("colour", "oracle"), default="colour")
    parser.add_argument("--patch", type=int, default=8)
    args = parser.parse_args()
    split_dir = Path(args.data_root) / args.dataset / args.split
    out = split_dir / args.kind.upper()
    make = colour_map if args.kind == "colour" else oracle_map
    count = 0
    for path in sorted((split_dir / "image").glob("*")):
        feat = make(split_dir, path.stem, path, args.patch).half()
        buffer = io.BytesIO()
        torch.save(feat.contiguous(), buffer)
        atomic_write_bytes(out / f"{path.stem}.pt", buffer.getvalue())
        count += 1
    atomic_write_json(out / "manifest.json", {"source": args.kind, "patch": args.patch})
    print(f"wrote {count} {args.kind} feature maps to {out}")


if __name__ == "__main__":
    main()
