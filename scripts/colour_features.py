"""Label-free colour "USS" features for the synthetic set: a control for DHR's Step 2.

    python scripts/colour_features.py [--data-root DIR] [--split train] [--name COLOUR] [--patch 8]

Each image's ImageNet-normalised RGB, area-averaged onto the grid the CAUSE exporter uses
(ceil_p(int(2H))/p x ceil_p(int(2W))/p), saved like ``dhr.features`` output (fp16, manifest with
the patch). On the synthetic set colour is exactly the "high-level" cue USS features should give:
it groups each colour family and cannot split stripes from checks, which is Step 3's job. Train
with ``python -m dhr.train experiment=synthetic_dhr dhr.uss_name=COLOUR`` to separate the
algorithm from the quality of the CAUSE features.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dhr.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from dhr.data.uss import feature_grid  # noqa: E402
from dhr.utils.io import atomic_write_bytes, read_rgb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("DHR_DATA", "data"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--name", default="COLOUR")
    parser.add_argument("--patch", type=int, default=8)
    args = parser.parse_args()
    split_dir = Path(args.data_root) / "SYNTH" / args.split
    out = split_dir / args.name
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    count = 0
    for path in sorted((split_dir / "image").glob("*")):
        image = (np.asarray(read_rgb(path), dtype=np.float32) / 255.0 - mean) / std
        x = torch.from_numpy(image).permute(2, 0, 1)[None]
        grid = feature_grid(x.shape[2], x.shape[3], args.patch)
        feat = F.adaptive_avg_pool2d(x, grid)[0].half()
        buffer = io.BytesIO()
        torch.save(feat.contiguous(), buffer)
        atomic_write_bytes(out / f"{path.stem}.pt", buffer.getvalue())
        count += 1
    (out / "manifest.json").write_text(json.dumps({"source": "colour", "patch": args.patch}) + "\n")
    print(f"wrote {count} colour feature maps to {out}")


if __name__ == "__main__":
    main()
