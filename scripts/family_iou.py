"""Per-class and family-merged scores of a prediction folder: is the error the object or its texture?

    python scripts/family_iou.py PRED_DIR [dataset=synthetic] [split=val]

Scores ``PRED_DIR`` against the split's GT twice with the official metric
(``dhr.ops.metrics.scores_from_confusion``, background-only images skipped as the evaluator
does): once per class, once with each ``dataset.families`` group (classes of one colour that
differ only in texture) merged into one class. A model that finds the objects but confuses their
textures scores high merged and low per class (docs/mask2former.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dhr.conf_path import CONFIG_DIR
from dhr.data.layout import DatasetInfo, DatasetLayout
from dhr.ops.metrics import scores_from_confusion
from dhr.utils.io import read_label_png


def family_map(classes: list[str], families: list[list[str]]) -> tuple[np.ndarray, list[str]]:
    """Class id -> merged id (a lookup table over 0..255, 255 kept), and the merged names."""
    names: list[str] = []
    table = np.full(256, 255, dtype=np.int64)
    for cid, name in enumerate(classes):
        group = next((f for f in families if name in f), [name])
        merged = "+".join(group)
        if merged not in names:
            names.append(merged)
        table[cid] = names.index(merged)
    return table, names


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    pred_dir, options = Path(argv[0]), dict(a.split("=", 1) for a in argv[1:])
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={options.get('dataset', 'synthetic')}"])
    info = DatasetInfo.from_cfg(OmegaConf.to_container(cfg.dataset, resolve=True))
    gt_dir = DatasetLayout(cfg.paths.data_root, info).mask_dir(options.get("split", "val"))
    table, merged_names = family_map(list(info.classes), [list(f) for f in cfg.dataset.get("families") or []])
    n, m = info.num_classes, len(merged_names)
    per_class, merged = np.zeros((n, n), np.int64), np.zeros((m, m), np.int64)
    for gt_path in sorted(gt_dir.glob("*.png")):
        gt = read_label_png(gt_path).astype(np.int64)
        if info.background_id is not None and not info.eval_background_only and \
                set(np.unique(gt).tolist()) <= {info.background_id, info.ignore_index}:
            continue  # background-only image: skipped, as the official evaluator does
        pred_path = pred_dir / gt_path.name
        if not pred_path.is_file():
            raise SystemExit(f"{pred_path}: missing prediction for {gt_path.name}")
        pred = read_label_png(pred_path).astype(np.int64)
        keep = gt != info.ignore_index
        per_class += np.bincount(gt[keep] * n + pred[keep], minlength=n * n).reshape(n, n)
        merged += np.bincount(table[gt[keep]] * m + table[pred[keep]], minlength=m * m).reshape(m, m)
    for title, conf, names in (("per class", per_class, list(info.classes)), ("families merged", merged, merged_names)):
        scores = scores_from_confusion(conf)
        cells = ", ".join(f"{name} {iou:.1f}" for name, iou in zip(names, scores.iou, strict=True))
        print(f"{title}: mIoU {scores.miou:.1f} ({cells})")


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit(print(__doc__))
    main(sys.argv[1:])
