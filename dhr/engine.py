"""What the entry points share: predict a split into palette PNGs, and score a folder against GT.

``dhr.train`` (evaluation after fit) and ``dhr.predict`` both call these, so neither imports
the other. Layer: below the entry points, above modules and callbacks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dhr.errors import DHRError


def compose_run(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as its command line would, with ``output_dir`` as the run directory.

    For runs inside this process (``dhr.pipeline``'s stages, tests): sets Hydra's runtime config
    so that ``${hydra:...}`` interpolations and launch checks see this run, then drops the
    ``hydra`` node.
    """
    import copy

    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    if GlobalHydra.instance().is_initialized():  # inside a running entry point: its own search path
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    else:
        cfg = copy.deepcopy(_composed(config_name, tuple(overrides), _config_signature(), os.getcwd()))
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


@functools.lru_cache(maxsize=512)
def _composed(config_name: str, overrides: tuple[str, ...], signature: str, cwd: str) -> DictConfig:
    """One composition per config, overrides and state of ``conf/``: the pipeline composes each stage's runs
    several times (its cache key, the runs themselves), at ~0.3 s each. Callers get a deep copy."""
    from hydra import compose, initialize_config_dir

    from dhr.conf_path import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)


def _config_signature() -> str:
    """Names, sizes and modification times of every file under ``conf/``: an edited config composes anew."""
    from dhr.conf_path import CONFIG_DIR

    entries = sorted((str(p), st.st_size, st.st_mtime_ns) for p in CONFIG_DIR.rglob("*.yaml") for st in [p.stat()])
    return hashlib.sha256(repr(entries).encode()).hexdigest()


def check_pretrained(*backbones: Any) -> None:
    """Resolve every ``backbone.pretrained=true`` before any data work: offline and uncached fails here, at once."""
    from dhr.models.pretrained import pretrained_file

    for node in backbones:
        if node is not None and node.get("pretrained") and not node.get("weights"):
            pretrained_file(str(node["name"]), node.get("pretrained_tag"))


PREDICT_MANIFEST = ".predict.json"  # in each prediction folder: what wrote it, and whether it finished


def claim_out_dirs(out_dirs: dict[str, Path], identity: dict[str, Any], overwrite: bool,
                   inputs: dict[str, Path]) -> set[str]:
    """Check prediction folders before a run and mark them as this run's; returns the ids to skip.

    Never into an input folder (``inputs``), whatever ``overwrite`` says. A folder that already holds
    PNGs is resumed (its missing files completed) when its manifest names the same checkpoint and
    settings and that run did not finish; it is refused when that run finished, when it holds
    another run's predictions, or PNGs that dhr.predict did not write. ``overwrite=true`` rewrites all.
    """
    from dhr.utils.io import atomic_write_json, refuse_inside

    done: set[str] | None = None
    for folder in out_dirs.values():
        refuse_inside(folder, inputs)
        written = {p.stem for p in folder.glob("*.png")} if folder.is_dir() else set()
        if written and not overwrite:
            manifest = folder / PREDICT_MANIFEST
            before = json.loads(manifest.read_text()) if manifest.is_file() else None
            fix = "choose another out_dir or pass overwrite=true"
            if before is None:
                raise DHRError(f"{folder} already holds {len(written)} PNGs that dhr.predict did not write; {fix}")
            changed = sorted(k for k in set(before["identity"]) | set(identity)
                             if before["identity"].get(k) != identity.get(k))
            if changed:
                raise DHRError(f"{folder} already holds predictions made with other settings ({', '.join(changed)} "
                               f"differ); {fix}")
            if before.get("finished"):
                raise DHRError(f"{folder} already holds the finished predictions of this checkpoint "
                               f"({len(written)} PNGs); {fix} to predict again")
        skip = set() if overwrite else written
        done = skip if done is None else done & skip
    for folder in out_dirs.values():
        atomic_write_json(folder / PREDICT_MANIFEST, {"identity": identity, "finished": False})
    return done or set()


def finish_out_dirs(out_dirs: dict[str, Path]) -> None:
    """Mark the prediction folders finished: a later run with the same settings is refused, not redone."""
    from dhr.utils.io import atomic_write_json

    for folder in out_dirs.values():
        manifest = json.loads((folder / PREDICT_MANIFEST).read_text())
        atomic_write_json(folder / PREDICT_MANIFEST, {**manifest, "finished": True})


def configure_inference(module: Any, infer: DictConfig, crf: DictConfig | None) -> None:
    """Give ``module`` the ``infer`` node (checked for the keys it reads) and, when it runs CRFs, the ``crf`` node."""
    values = OmegaConf.to_container(infer, resolve=True)
    missing = [k for k in getattr(module, "infer_keys", ()) if k not in values]
    if missing:
        raise DHRError(f"infer.{missing[0]} is not set but {type(module).__name__} needs it; add the model's config "
                       f"group (e.g. model=cam or model=dhr) to the command")
    module.infer = values
    runs_crf = getattr(module, "crf_runner", None) is not None or (getattr(module, "writes_crf", False) and values.get("crf"))
    if crf is not None and runs_crf:
        from dhr.ops.crf import CRFParams

        module.set_crf(CRFParams.from_cfg(OmegaConf.to_container(crf, resolve=True)))


def predict_to_folder(module: Any, datamodule: Any, trainer_cfg: DictConfig, out_dir: Path,
                      out_dirs: dict[str, Path] | None = None, progress: DictConfig | None = None, *,
                      sharded: bool = False) -> int:
    """Predict ``datamodule.predict_split`` into ``out_dir`` (or ``out_dirs`` per output); returns how many
    of its images now have every output on disk (what all processes wrote).

    ``progress`` is the ``callbacks.progress_bar`` node (bars on a terminal, log lines otherwise).
    ``sharded``: run on ``trainer_cfg``'s devices and strategy, each process writing its share of the
    images (Lightning's unrepeated sampler: every image once); else one process. Call
    :func:`configure_inference` first.
    """
    from hydra.utils import instantiate

    from dhr.callbacks.prediction_writer import PaletteWriter

    writer = PaletteWriter(out_dir, datamodule.info.palette_array, out_dirs)
    callbacks = [writer, instantiate(progress)] if progress is not None else [writer]
    overrides = dict(callbacks=callbacks, logger=False, enable_checkpointing=False, max_epochs=1,
                     enable_progress_bar=progress is not None)
    cfg = OmegaConf.to_container(trainer_cfg, resolve=True)
    for key in ("fast_dev_run", "limit_train_batches", "limit_val_batches", "overfit_batches", "sync_batchnorm", "plugins"):
        cfg.pop(key, None)
    if not sharded:
        cfg.pop("strategy", None)
        cfg["devices"] = 1
    if datamodule.data_predict is None:  # set up here, so that the ids to expect are known in this process
        datamodule.setup("predict")
    trainer = instantiate(cfg, **overrides)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    trainer.strategy.barrier()  # under strategy=ddp every rank counts after all have written
    folders = list(writer.out_dirs.values())
    return sum(all((folder / f"{i}.png").is_file() for folder in folders) for i in datamodule.data_predict.ids)


def evaluate_split(datamodule: Any, pred_dir: Path, split: str, tag: str) -> dict[str, Any]:
    """Score ``pred_dir`` against the split's GT with the official metric; prints the table, writes a JSON beside it."""
    from dhr.ops.evaluation import evaluate_folder
    from dhr.ops.report import report_result
    from dhr.utils.io import atomic_write_json

    info = datamodule.info
    result = evaluate_folder(pred_dir, datamodule.layout.mask_dir(split), num_classes=info.num_classes,
                             ignore_index=info.ignore_index, background_id=info.background_id,
                             skip_background_only=not info.eval_background_only)
    out = report_result(result, info.classes, tag, title=f"{tag}: {info.name}/{info.split_dir_name(split)}")
    atomic_write_json(pred_dir.parent / f"{pred_dir.name}_scores.json", out)
    return out


def official_dhr_checkpoint(path: str | Path, *, keep_cam: bool, dataset: Any = None,
                            overrides: tuple[str, ...] = (), raw: Any = None) -> tuple[dict[str, Any], Any]:
    """A dhr checkpoint (module tag, hyper-parameters, weights) from the DHR release's ``last.pth``.

    ``keep_cam`` keeps the CAM head (``model=dhr``); without it the plain DeepLabv3+
    (``model=deeplabv3plus``) gets every other tensor, as the release's inference does. The
    hyper-parameters are those of ``dhr.train`` with ``backbone=resnet101`` and the given dataset
    node (or ``dataset=`` in ``overrides``). The file holds EMA weights: they are both weight sets.
    Returns the checkpoint dict and the module with the weights loaded.
    """
    from omegaconf import open_dict

    from dhr.models.official import (
        is_official_dhr,
        load_strict,
        map_official_dhr,
        unwrap_state_dict,
    )
    from dhr.utils.checkpoint import (
        EMA_KEY,
        MODULE_KEY,
        module_class,
        read_checkpoint,
        without_weight_files,
    )
    from dhr.utils.cli import compose_config

    state = unwrap_state_dict(read_checkpoint(path, "ckpt") if raw is None else raw, str(path))
    if not is_official_dhr(state):
        raise DHRError(f"{path}: not the official DHR DeepLabv3+ layout (no model.conv1.weight / seg_decoder.classifier.weight)")
    cfg = compose_config("train", [f"model={'dhr' if keep_cam else 'deeplabv3plus'}", "backbone=resnet101", *overrides])
    if dataset is not None:
        with open_dict(cfg):
            cfg.dataset = OmegaConf.create(OmegaConf.to_container(dataset, resolve=True) if isinstance(dataset, DictConfig)
                                           else dict(dataset))
    hparams = OmegaConf.to_container(cfg.model, resolve=True)
    target = str(hparams.pop("_target_"))
    hparams.pop("_convert_", None)
    module = module_class(target, path)(**without_weight_files(hparams))
    mapped, dropped = map_official_dhr(state, keep_cam=keep_cam, origin=str(path))
    load_strict(module, mapped, str(path))
    checkpoint = {MODULE_KEY: target, "hyper_parameters": hparams, "state_dict": mapped, EMA_KEY: mapped,
                  "converted_from": {"file": str(path), "kind": "dhr", "dropped": dropped}}
    return checkpoint, module


def load_any_module(path: str | Path, dataset: Any) -> Any:
    """A dhr ``.ckpt``, or the DHR release's ``last.pth`` read directly (CAM head dropped), in eval mode."""
    from dhr.data.layout import DatasetInfo
    from dhr.models.official import is_official_dhr, unwrap_state_dict
    from dhr.utils.checkpoint import MODULE_KEY, load_module, read_checkpoint

    info = DatasetInfo.from_cfg(OmegaConf.to_container(dataset, resolve=True) if isinstance(dataset, DictConfig) else dataset)
    raw = read_checkpoint(path, "ckpt")
    if MODULE_KEY not in raw and is_official_dhr(unwrap_state_dict(raw, str(path))):
        _, module = official_dhr_checkpoint(path, keep_cam=False, dataset=dataset, raw=raw)
        return module.eval()
    return load_module(path, "ckpt", num_classes=info.num_classes, dataset=info.name, state=raw)
