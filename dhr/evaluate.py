"""``python -m dhr.evaluate pred=DIR gt=DIR dataset=voc``: the official DHR metric.

Prints the official summary line, a per-class table, and writes a JSON of every number. Stays
torch-free so that it starts fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dhr.conf_path import CONFIG_DIR

log = logging.getLogger(__name__)


def resolve_folders(cfg: Any, info: Any, data_root: Path) -> tuple[Path, Path]:
    """Prediction and GT folders: verbatim with ``fix`` (release ``--fix``), else the release layout."""
    split_dir = info.split_dir_name(cfg.split)
    if cfg.fix:
        pred = Path(cfg.pred)
        gt = Path(cfg.gt) if cfg.gt else data_root / info.name / split_dir / "mask"
        return pred, gt
    pred_split = "train_aug" if info.name == "VOC2012" and split_dir == "train" else split_dir
    pred = Path(cfg.pred) / info.name / cfg.tag / pred_split
    gt = Path(cfg.gt or data_root) / info.name / split_dir / "mask"
    return pred, gt


def untagged_ids(gt_dir: Path, ids: list[str]) -> set[str]:
    """Ids whose XML (beside the GT folder) has no object: dropped with ``skip_untagged``."""
    from dhr.data.tags import read_xml_names

    xml_dir = gt_dir.parent / "xml"
    if not xml_dir.is_dir():
        from dhr.errors import DHRError

        raise DHRError(f"{xml_dir}: skip_untagged needs the split's xml/ folder beside {gt_dir}")
    return {i for i in ids if not read_xml_names(xml_dir / f"{i}.xml")}


def check_class_file(gt_dir: Path, info: Any) -> None:
    """The class file of the dataset the GT belongs to (``{DATA}/{DATA}.json``, two folders up) must list
    ``dataset=``'s classes: else every class name and count in the table would be another dataset's."""
    import json

    from dhr.errors import DHRError

    root = gt_dir.parent.parent
    path = root / f"{root.name}.json"
    try:
        names = json.loads(path.read_text())["names"] if path.is_file() else None
    except (json.JSONDecodeError, KeyError, TypeError):
        return  # not a class file of ours
    if names is not None and tuple(names) != tuple(info.classes):
        raise DHRError(f"gt={gt_dir}: its dataset's class file {path} lists {len(names)} classes ({', '.join(names[:4])}, ...) "
                       f"but dataset={info.name} has {info.num_classes}; pass the dataset= of these masks")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate and report; returns the JSON-able result (exit status is the caller's job)."""
    from dhr.data.layout import DatasetInfo
    from dhr.ops.evaluation import evaluate_folder, folder_mix_ups
    from dhr.ops.report import report_result
    from dhr.utils.io import atomic_write_json

    if cfg.dataset.get("folder"):  # a folder dataset's GT lies in its view
        from dhr.data.sources import ensure_dataset

        ensure_dataset(cfg.paths.data_root, OmegaConf.to_container(cfg.dataset, resolve=True))
    info = DatasetInfo.from_cfg(cfg.dataset)
    pred_dir, gt_dir = resolve_folders(cfg, info, Path(cfg.paths.data_root))
    check_class_file(gt_dir, info)
    mode = str(cfg.skip_background_only).lower()
    skip_bg = {"auto": not info.eval_background_only, "true": True, "false": False}.get(mode)
    if skip_bg is None:
        from dhr.errors import DHRError

        raise DHRError(f"skip_background_only={cfg.skip_background_only!r}: use auto, true or false")
    ids = sorted(p.stem for p in gt_dir.glob("*.png")) if gt_dir.is_dir() else None
    if cfg.skip_untagged and ids:
        dropped = untagged_ids(gt_dir, ids)
        ids = [i for i in ids if i not in dropped]
    if ids and pred_dir.is_dir():
        for warning in folder_mix_ups(pred_dir, gt_dir, ids, info.ignore_index):
            log.warning(warning)
    result = evaluate_folder(
        pred_dir, gt_dir, num_classes=info.num_classes, ignore_index=info.ignore_index,
        background_id=info.background_id, skip_background_only=skip_bg, ids=ids, workers=cfg.workers,
    )
    if result.out_of_range_pixels:
        log.warning("%d valid pixels hold predictions >= %d that are not %d (counted as misses)",
                    result.out_of_range_pixels, info.num_classes, info.ignore_index)
    if result.missing:
        head = ", ".join(result.missing[:20])
        msg = (f"{len(result.missing)} prediction(s) missing in {pred_dir} (first: {head}); "
               "scores below cover the evaluated images only")
        if cfg.allow_missing:
            log.warning(msg)
        else:
            print(f"ERROR: {msg}. Predict every image or pass allow_missing=true.", file=sys.stderr)
    out = report_result(result, info.classes, cfg.tag, title=f"{cfg.tag}: {pred_dir}", table=cfg.table)
    out.update(pred=str(pred_dir), gt=str(gt_dir), dataset=info.name, allow_missing=bool(cfg.allow_missing))
    target = json_path(cfg)
    if target is not None:
        atomic_write_json(target, out)
        log.info("scores written to %s", target)
    return out


USAGE = """usage: python -m dhr.evaluate pred=DIR [gt=DIR] [dataset=voc] [key=value ...] [--cfg] [--help]

Scores a folder of label PNGs with the official DHR metric. Keys (conf/evaluate.yaml):
  pred, gt, split, tag, fix, allow_missing, skip_background_only, skip_untagged, workers,
  table, json, paths.data_root; group dataset=<option>.
Exit status: 0 ok, 1 predictions missing (without allow_missing=true), 2 bad input.
"""


def compose(overrides: list[str]) -> DictConfig:
    """Compose conf/evaluate.yaml once (no Hydra run machinery: start-up is part of the speed)."""
    from dhr.utils.cli import compose_config

    return compose_config("evaluate", overrides)


def json_path(cfg: DictConfig) -> Path | None:
    """Where the JSON goes: ``auto`` = ``{log_dir}/evaluate/runs/<date>_<time>/scores.json``."""
    if not cfg.json:
        return None
    if cfg.json == "auto":
        from datetime import datetime

        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        return Path(cfg.paths.log_dir) / "evaluate" / "runs" / stamp / "scores.json"
    return Path(cfg.json)


def main(argv: list[str] | None = None) -> None:
    """Console script ``dhr-evaluate``: Hydra-style ``key=value`` overrides."""
    from dhr.utils.cli import plain_main

    options = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))
    out = plain_main("evaluate", run, USAGE + f"dataset options: {', '.join(options)}", argv)
    if out is not None and out["missing"] and not out["allow_missing"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
