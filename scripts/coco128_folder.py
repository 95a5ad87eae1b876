"""Make the shipped COCO128 sample a plain folder dataset: a tags CSV of class names beside its images.

    python scripts/coco128_folder.py --out /tmp/coco128
    python -m dhr.pipeline dataset=folder dataset.name=coco128 \
        dataset.folder.images=../shared/data/coco128_seg/train2017/image dataset.folder.tags=/tmp/coco128/tags.csv \
        dataset.classes_file=../shared/data/coco128_seg/classes.txt \
        dataset.folder.masks=../shared/data/coco128_seg/train2017/mask paths.data_root=/tmp/coco128/data

The sample's ``cls_labels.json`` holds class ids; a folder dataset reads names (docs/data.md).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco128_seg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="the coco128_seg folder")
    parser.add_argument("--out", type=Path, required=True, help="where tags.csv is written")
    args = parser.parse_args()
    names = (args.sample / "classes.txt").read_text().splitlines()
    table = json.loads((args.sample / "train2017" / "cls_labels.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "tags.csv"
    with target.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "classes"])
        for image_id in sorted(table):
            writer.writerow([f"{image_id}.jpg", ";".join(names[c] for c in table[image_id])])
    print(f"wrote {target} ({len(table)} images)")


if __name__ == "__main__":
    main()
