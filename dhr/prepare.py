"""``python -m dhr.prepare dataset=NAME src=DIR``: an official dataset release -> the DHR tree.

Writes ``{out}/{DATA}/{split}/{image,mask,xml}`` and ``{DATA}/{DATA}.json``; checks split sizes
against the official ones; keeps what an earlier run wrote (resume); never writes into ``src``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dhr.conf_path import CONFIG_DIR

log = logging.getLogger(__name__)

USAGE = """usage: python -m dhr.prepare dataset=NAME src=DIR [sbd=DIR] [out=DIR] [key=value ...] [--cfg] [--help]

Converts an official release into {out}/{DATA}/{split}/{image,mask,xml} (docs/data.md):
  dataset=voc src=VOCdevkit_parent sbd=benchmark_RELEASE   train_aug (10,582), validation, test
  dataset=coco src=COCO2014_dir                            train, validation (81 classes)
  dataset=context src=DIR   dataset=ade src=DIR   dataset=stuff src=DIR
Keys (conf/prepare.yaml): src, sbd, out, splits, strict, overwrite, workers, coco.overlap, coco.crowd.
Exit status: 0 ok, 2 bad input (every problem is listed).
"""


def run(cfg: DictConfig) -> dict[str, Any]:
    """Convert; returns per split the images written and kept, and where the tree is."""
    from dhr.data.convert import converter_for
    from dhr.data.convert.common import check_options, check_sizes, convert, refuse_overlap
    from dhr.data.layout import DatasetInfo
    from dhr.errors import DHRError

    info = DatasetInfo.from_cfg(cfg.dataset)
    module = converter_for(info.name)
    src = Path(str(cfg.src)).expanduser()
    if not src.is_dir():
        raise DHRError(f"src={cfg.src}: folder not found; give the folder of the official {info.name} download")
    sbd = Path(str(cfg.sbd)).expanduser() if cfg.sbd else None
    if sbd is not None and not sbd.is_dir():
        raise DHRError(f"sbd={cfg.sbd}: folder not found; give SBD's benchmark_RELEASE folder")
    out_root = Path(str(cfg.out)).expanduser()
    refuse_overlap(out_root / info.name, [p for p in (src, sbd) if p is not None])
    splits = list(cfg.splits) if cfg.splits else None
    start = time.perf_counter()
    plan = module.plan(src=src, sbd=sbd, splits=splits, info=info, coco=cfg.coco)
    for note in plan.notes:
        log.info("%s", note)
    check_sizes(plan, bool(cfg.strict))
    options = {"converter": module.__name__.rsplit(".", 1)[-1], **({"coco": OmegaConf.to_container(cfg.coco)} if info.name == "COCO2014" else {})}
    check_options(out_root / info.name, options, bool(cfg.overwrite))
    counts = convert(plan, out_root=out_root, info=info, read_mask=module.read_mask,
                     overwrite=bool(cfg.overwrite), workers=cfg.workers)
    for split, c in counts.items():
        log.info("%s/%s: %d images written, %d kept from an earlier run", info.name, split, c["written"], c["kept"])
    log.info("wrote %s in %.0f s; check it with: python -m dhr.doctor dataset=<name> paths.data_root=%s",
             out_root / info.name, time.perf_counter() - start, out_root)
    return {"root": str(out_root / info.name), "splits": counts}


def main(argv: list[str] | None = None) -> None:
    """Console script ``dhr-prepare``."""
    from dhr.utils.cli import plain_main

    options = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))
    plain_main("prepare", run, USAGE + f"dataset options: {', '.join(options)}", argv)


if __name__ == "__main__":
    main()
