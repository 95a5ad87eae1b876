"""``python -m dhr.doctor dataset=NAME [wss=...] [uss=CAUSE]``: is this dataset tree ready to train on?

Decodes every image, mask, tag, seed and feature file of every split and prints counts per
split, class frequencies and every problem. Exit status 1 when there are errors, 2 for bad input.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dhr.conf_path import CONFIG_DIR

log = logging.getLogger(__name__)
LISTED = 20

USAGE = """usage: python -m dhr.doctor dataset=NAME [paths.data_root=DIR] [wss=mars] [uss=CAUSE] [json=PATH] [--cfg] [--help]

Checks every split of {data_root}/{DATA}/ (conf/doctor.yaml): unreadable files, missing or
mis-sized masks, out-of-range class ids, unknown tag names, untagged images, orphans, duplicate
ids; with wss= the seed masks of the training split, with uss= the USS feature files.
Exit status: 0 healthy (warnings allowed), 1 errors found, 2 bad input.
"""


def run(cfg: DictConfig) -> dict[str, Any]:
    """Check the tree; print the tables and problems; returns the report as JSON-able data."""
    from dhr.data.doctor import as_json, check_split, class_table, split_folders, summary_table
    from dhr.data.layout import DatasetInfo, DatasetLayout
    from dhr.data.sources import ensure_dataset
    from dhr.utils.io import atomic_write_json

    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    ensure_dataset(cfg.paths.data_root, dataset)
    info = DatasetInfo.from_cfg(dataset)
    layout = DatasetLayout(cfg.paths.data_root, info)
    layout.check_class_json()
    splits = list(cfg.splits) if cfg.splits else split_folders(layout)
    train_dir = info.split_dir_name("train")
    wss = cfg.get("wss")
    reports = []
    for split in dict.fromkeys(info.split_dir_name(s) for s in splits):
        seeds = Path(str(wss.path)) if wss is not None and split == train_dir else None
        reports.append(check_split(layout, split, seeds_dir=seeds, uss_name=cfg.uss,
                                   uss_patch=int(cfg.uss_patch), uss_dim=cfg.uss_dim, workers=cfg.workers))
    print(f"\n{info.name} at {layout.root}\n")
    print(summary_table(reports))
    print()
    print(class_table(reports, info.classes))
    for r in reports:
        for kind, items in (("ERROR", r.errors), ("warning", r.warnings)):
            for line in items[:LISTED]:
                print(f"{kind} [{r.split}] {line}")
            if len(items) > LISTED:
                print(f"{kind} [{r.split}] ... and {len(items) - LISTED} more (json= lists all)")
    out = as_json(reports, info.name)
    n_err = sum(len(r.errors) for r in reports)
    print(f"\n{'healthy' if out['ok'] else f'{n_err} error(s)'}: {info.name}, {len(reports)} split(s)")
    if cfg.json:
        atomic_write_json(Path(str(cfg.json)), out)
        log.info("report written to %s", cfg.json)
    return out


def main(argv: list[str] | None = None) -> None:
    """Console script ``dhr-doctor``."""
    from dhr.utils.cli import plain_main

    options = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))
    out = plain_main("doctor", run, USAGE + f"dataset options: {', '.join(options)}", argv)
    if out is not None and not out["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
