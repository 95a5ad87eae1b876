"""``python -m dhr.predict ckpt=PATH split=val``: multi-scale + flip label maps as palette PNGs."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dhr.utils.cli import hydra_entry

log = logging.getLogger(__name__)


def module_class(path: str) -> type:
    """The LightningModule class a checkpoint names (``dhr_module``); only dhr's own modules."""
    import importlib

    from dhr.errors import DHRError

    module_name, _, name = path.rpartition(".")
    if not module_name.startswith("dhr.modules."):
        raise DHRError(f"checkpoint names module class {path!r}, which is not one of dhr's")
    return getattr(importlib.import_module(module_name), name)


def load_module(ckpt: str | Path, map_location: str = "cpu") -> Any:
    """The segmentation module of a checkpoint with its EMA weights when it has them."""
    import torch

    from dhr.callbacks.ema import CKPT_KEY
    from dhr.errors import DHRError
    from dhr.modules.segmentation import SegmentationModule

    path = Path(ckpt)
    if not path.is_file():
        raise DHRError(f"ckpt={ckpt}: checkpoint not found; pass a .ckpt written by dhr.train")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        cls = module_class(state.get("dhr_module")) if state.get("dhr_module") else SegmentationModule
        module = cls(**state["hyper_parameters"])
    except (RuntimeError, KeyError, EOFError, TypeError, ValueError, pickle.UnpicklingError) as err:
        raise DHRError(f"{path}: not a readable dhr segmentation checkpoint ({str(err).splitlines()[0]})") from None
    if CKPT_KEY not in state:
        log.warning("%s has no EMA weights; predicting with the online weights", path)
    module.load_state_dict(state.get(CKPT_KEY, state["state_dict"]))
    return module.eval()


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Never overwrite earlier results silently."""
    if out_dir.is_dir() and any(out_dir.glob("*.png")) and not overwrite:
        from dhr.errors import DHRError

        raise DHRError(f"{out_dir} already holds predictions; choose another out_dir or pass overwrite=true")


def predict_to_folder(module: Any, datamodule: Any, trainer_cfg: DictConfig, out_dir: Path, infer: DictConfig,
                      out_dirs: dict[str, Path] | None = None) -> int:
    """Predict ``datamodule.predict_split`` into ``out_dir`` (or ``out_dirs`` per output); returns the image count."""
    from hydra.utils import instantiate

    from dhr.callbacks.prediction_writer import PaletteWriter

    module.infer = OmegaConf.to_container(infer, resolve=True)
    writer = PaletteWriter(out_dir, datamodule.info.palette_array, out_dirs)
    overrides = dict(callbacks=[writer], logger=False, enable_checkpointing=False, max_epochs=1)
    cfg = OmegaConf.to_container(trainer_cfg, resolve=True)
    for key in ("fast_dev_run", "limit_train_batches", "limit_val_batches", "overfit_batches", "strategy", "sync_batchnorm"):
        cfg.pop(key, None)
    cfg["devices"] = 1  # one process: outputs of a spawned pool would not come back
    trainer = instantiate(cfg, **overrides)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    return writer.written


def evaluate_split(datamodule: Any, pred_dir: Path, split: str, tag: str) -> dict[str, Any]:
    """Score ``pred_dir`` against the split's GT with the official metric; prints the table, writes a JSON beside it."""
    from dhr.ops.evaluation import evaluate_folder
    from dhr.utils.io import atomic_write_json
    from dhr.utils.report import report_result

    info = datamodule.info
    result = evaluate_folder(pred_dir, datamodule.layout.mask_dir(split), num_classes=info.num_classes,
                             ignore_index=info.ignore_index, background_id=info.background_id,
                             skip_background_only=not info.eval_background_only)
    out = report_result(result, info.classes, tag, title=f"{tag}: {info.name}/{info.split_dir_name(split)}")
    atomic_write_json(pred_dir.parent / f"{pred_dir.name}_scores.json", out)
    return out


def resolve_out_dir(cfg: DictConfig) -> Path:
    """``out_dir``, else ``{seeds_dir}/{split folder}`` for seed models, else ``<run>/predictions/{split}``."""
    if cfg.get("out_dir"):
        return Path(cfg.out_dir)
    if cfg.get("seeds_dir"):
        from dhr.data.layout import DatasetInfo

        info = DatasetInfo.from_cfg(OmegaConf.to_container(cfg.dataset, resolve=True))
        return Path(cfg.seeds_dir) / info.split_dir_name(cfg.split)
    return Path(cfg.paths.output_dir) / "predictions" / str(cfg.split)


def run(cfg: DictConfig) -> dict[str, Any]:

    from dhr.data.datamodule import SegmentationDataModule

    module = load_module(cfg.ckpt)
    out_dir = resolve_out_dir(cfg)
    needs_tags = getattr(module, "needs_tags", False)
    crf = getattr(module, "writes_crf", False) and bool(cfg.infer.get("crf", False))
    # CAM seeds, DHR masks: the CRF-refined maps are the result; the maps before the CRF go beside them
    out_dirs = {"label_crf": out_dir, "label": out_dir.with_name(out_dir.name + "_nocrf")} if crf else {"label": out_dir}
    for folder in out_dirs.values():
        check_out_dir(folder, cfg.overwrite)
    datamodule = SegmentationDataModule(data_root=cfg.paths.data_root, dataset=OmegaConf.to_container(cfg.dataset, resolve=True),
                                        predict_split=cfg.split, val_split=None, num_workers=cfg.num_workers,
                                        validate="quick", with_tags=needs_tags)
    if datamodule.info.num_classes != module.hparams.num_classes:
        from dhr.errors import DHRError

        raise DHRError(f"{cfg.ckpt} predicts {module.hparams.num_classes} classes but dataset "
                       f"{datamodule.info.name} has {datamodule.info.num_classes}; pick the matching dataset=...")
    datamodule.prepare_data()
    written = predict_to_folder(module, datamodule, cfg.trainer, out_dir, cfg.infer, out_dirs)
    log.info("wrote %d label PNGs to %s", written, ", ".join(str(d) for d in out_dirs.values()))
    result: dict[str, Any] = {"out_dir": str(out_dir), "written": written}
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
