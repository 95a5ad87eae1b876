"""``python -m dhr.predict ckpt=PATH split=val``: multi-scale + flip label maps as palette PNGs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dhr.errors import DHRError
from dhr.utils.cli import hydra_entry

log = logging.getLogger(__name__)


VOC_SERVER_DIR = Path("results", "VOC2012", "Segmentation", "comp5_test_cls")  # the evaluation server's layout


def resolve_out_dir(cfg: DictConfig) -> Path:
    """``out_dir``, else ``{seeds_dir}/{split folder}`` for seed models, else ``<run>/predictions/{split}``."""
    if cfg.get("out_dir"):
        out = Path(cfg.out_dir)
    elif cfg.get("seeds_dir"):
        from dhr.data.layout import DatasetInfo

        info = DatasetInfo.from_cfg(OmegaConf.to_container(cfg.dataset, resolve=True))
        out = Path(cfg.seeds_dir) / info.split_dir_name(cfg.split)
    else:
        out = Path(cfg.paths.output_dir) / "predictions" / str(cfg.split)
    return out


def prediction_identity(cfg: DictConfig) -> dict[str, Any]:
    """What makes two prediction runs the same: a resumed run must match (``claim_out_dirs``)."""
    ckpt = Path(cfg.ckpt)
    stat = ckpt.stat() if ckpt.is_file() else None
    return {"ckpt": str(ckpt.resolve()), "ckpt_bytes": stat.st_size if stat else None,
            "ckpt_mtime_ns": stat.st_mtime_ns if stat else None, "dataset": str(cfg.dataset.name),
            "split": str(cfg.split), "infer": OmegaConf.to_container(cfg.infer, resolve=True),
            "crf": OmegaConf.to_container(cfg.crf, resolve=True)}


def run(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import instantiate
    from pytorch_lightning.utilities import rank_zero_only

    from dhr.engine import (
        claim_out_dirs,
        configure_inference,
        evaluate_split,
        finish_out_dirs,
        load_any_module,
        predict_to_folder,
    )

    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    module = load_any_module(cfg.ckpt, dataset)  # a dhr .ckpt, or the DHR release's last.pth
    configure_inference(module, cfg.infer, cfg.crf)
    out_dir = resolve_out_dir(cfg)
    needs_tags = getattr(module, "needs_tags", False)
    crf = getattr(module, "writes_crf", False) and bool(cfg.infer.get("crf", False))
    # CAM seeds, DHR masks: the CRF-refined maps are the result; the maps before the CRF go beside them
    out_dirs = {"label_crf": out_dir, "label": out_dir.with_name(out_dir.name + "_nocrf")} if crf else {"label": out_dir}
    if cfg.get("voc_server"):  # each folder holds results/VOC2012/Segmentation/comp5_test_cls/, ready to tar
        out_dirs = {key: folder / VOC_SERVER_DIR for key, folder in out_dirs.items()}
        out_dir = out_dir / VOC_SERVER_DIR
    datamodule = instantiate(cfg.data, predict_split=cfg.split, val_split=None, validate="quick", with_tags=needs_tags,
                             masks="gt", with_gt=False, uss_dir=None)
    datamodule.prepare_data()
    datamodule.predict_skip = claim_out_dirs(out_dirs, prediction_identity(cfg), cfg.overwrite,
                                             datamodule.layout.input_folders())
    if datamodule.predict_skip:
        log.info("resuming: %d label maps are already written in %s, predicting the rest",
                 len(datamodule.predict_skip), out_dir)
    written = predict_to_folder(module, datamodule, cfg.trainer, out_dir, out_dirs, progress=cfg.callbacks.get("progress_bar"),
                                sharded=True)
    if rank_zero_only.rank != 0:  # strategy=ddp: every rank runs this command; rank 0 finishes and reports
        return {}
    expected = len(datamodule.data_predict)
    if written < expected:  # Lightning ends a Ctrl-C'd run quietly
        raise DHRError(f"prediction interrupted after {written} of {expected} images of {out_dir}; run the same "
                       "command again to complete the missing ones")
    finish_out_dirs(out_dirs)
    log.info("wrote %d label PNGs to %s", written, ", ".join(str(d) for d in out_dirs.values()))
    result: dict[str, Any] = {"out_dir": str(out_dir), "written": written, "resumed": len(datamodule.predict_skip)}
    if cfg.evaluate and datamodule.layout.mask_dir(cfg.split).is_dir():
        for key, folder in out_dirs.items():
            tag = f"{Path(cfg.ckpt).stem}{'+CRF' if key == 'label_crf' else ''}"
            result["scores" if folder == out_dir else f"scores_{key}"] = evaluate_split(datamodule, folder, cfg.split, tag=tag)
    return result


_main = hydra_entry("predict", run)


def main() -> None:
    """Console script ``dhr-predict``."""
    _main()


if __name__ == "__main__":
    main()
