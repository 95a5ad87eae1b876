"""``python -m dhr.train``: compose data, model, callbacks, loggers and trainer, then fit.

With ``evaluate_after_fit`` the final EMA weights predict the val split and the official table
is printed, so the default command is a complete supervised experiment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dhr.utils.cli import hydra_entry

log = logging.getLogger(__name__)


def resolve_ckpt(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` means this run directory's ``checkpoints/last.ckpt`` (a requeued job's own)."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
        log.warning("ckpt_path=last but %s does not exist: starting from scratch "
                    "(set hydra.run.dir to the run you want to resume)", last)
        return None
    if not Path(ckpt_path).is_file():
        from dhr.errors import DHRError

        raise DHRError(f"ckpt_path={ckpt_path}: checkpoint not found")
    return ckpt_path


WHOLE_NUMBERS = ("max_epochs", "min_epochs", "max_steps", "check_val_every_n_epoch", "log_every_n_steps",
                 "accumulate_grad_batches", "num_sanity_val_steps")
BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


def check_trainer_values(trainer: DictConfig) -> None:
    """Numbers the trainer reads, checked before data and model are built (``trainer.max_epochs=abc``)."""
    from dhr.errors import DHRError

    for key in WHOLE_NUMBERS:
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise DHRError(f"trainer.{key}={value!r}: use a whole number (recipe.max_epochs sets max_epochs)")
    for key in BATCH_LIMITS:
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise DHRError(f"trainer.{key}={value!r}: use a batch count (int) or a fraction of the batches (float)")


def trainer_plugins(trainer_cfg: DictConfig) -> dict[str, Any]:
    """The config's ``trainer.plugins`` and two of ours.

    Checkpoints are written atomically (:class:`~dhr.utils.atomic_checkpoint.AtomicCheckpointIO`)
    unless the config names its own ``CheckpointIO``. Under ``hydra/launcher=slurm`` submitit
    requeues a pre-empted job (which then resumes its own ``last.ckpt`` with ``ckpt_path=last``);
    Lightning's own SLURM auto-requeue would requeue it a second time, so it is switched off there.
    """
    import os

    from hydra.utils import instantiate
    from lightning_fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
    from pytorch_lightning.plugins.io import CheckpointIO

    from dhr.utils.atomic_checkpoint import AtomicCheckpointIO

    plugins = list(instantiate(trainer_cfg.plugins)) if trainer_cfg.get("plugins") else []
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    on_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    if on_slurm and not any(isinstance(plugin, ClusterEnvironment) for plugin in plugins):
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return {"plugins": plugins}


def check_launch(cfg: DictConfig) -> None:
    """Refuse combinations that cannot work, before anything heavy starts."""
    from hydra.core.hydra_config import HydraConfig

    from dhr.errors import DHRError

    check_trainer_values(cfg.trainer)
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if not HydraConfig.initialized() or not strategy.startswith("ddp") or strategy.startswith("ddp_spawn"):
        return
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"
    on_slurm = "submitit_slurm" in str(hydra_cfg.launcher.get("_target_", "")) if hydra_cfg.get("launcher") else False
    if multirun and not on_slurm:
        raise DHRError("trainer.strategy=ddp inside a local multirun re-launches the whole sweep in every rank; "
                       "use trainer=ddp_cpu (ddp_spawn), one device per job, or hydra/launcher=slurm")


def fit_stages(cfg: DictConfig, model: Any, datamodule: Any, loggers: list[Any], output_dir: Path) -> Any:
    """Fit every stage in ``cfg.stages`` (or the model once); returns the last trainer.

    A multi-stage run keeps one checkpoint folder per stage and a ``done`` marker; with
    ``ckpt_path=last`` finished stages are reloaded and skipped, an unfinished one resumes.
    """
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import ModelCheckpoint

    from dhr.callbacks.last_checkpoint import LastCheckpoint
    from dhr.utils.checkpoint import check_resumable, model_weights, read_checkpoint
    from dhr.utils.instantiate import instantiate_group

    stages = list(cfg.get("stages") or [None])
    trainer = None
    for stage in stages:
        callbacks = instantiate_group(cfg.get("callbacks"))
        overrides: dict[str, Any] = {}
        ckpt = resolve_ckpt(cfg.get("ckpt_path"), output_dir) if stage is None else None
        if stage is not None:
            model.set_stage(stage)
            stage_dir = output_dir / "checkpoints" / stage
            for cb in callbacks:
                if isinstance(cb, (ModelCheckpoint, LastCheckpoint)):
                    cb.dirpath = str(stage_dir)
            overrides["max_epochs"] = int(cfg.stage_epochs[stage])
            resume = cfg.get("ckpt_path") == "last"
            if resume and (stage_dir / "done").is_file():
                state = read_checkpoint(stage_dir / "last.ckpt", "ckpt_path")
                model.load_state_dict(model_weights(state, stage_dir / "last.ckpt", prefer_ema=False))
                log.info("stage %s already finished: loaded %s", stage, stage_dir / "last.ckpt")
                continue
            ckpt = str(stage_dir / "last.ckpt") if resume and (stage_dir / "last.ckpt").is_file() else None
            log.info("fitting stage %s for %d epoch(s)", stage, overrides["max_epochs"])
        if ckpt is not None:
            check_resumable(ckpt, model, "ckpt_path")
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides,
                              **trainer_plugins(cfg.trainer))
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
        take_state_of_spawned_ranks(trainer, model, callbacks)
        if stage is not None and trainer.is_global_zero and not trainer.fast_dev_run:
            (output_dir / "checkpoints" / stage).mkdir(parents=True, exist_ok=True)
            (output_dir / "checkpoints" / stage / "done").write_text("finished\n")
    return trainer


def take_state_of_spawned_ranks(trainer: Any, model: Any, callbacks: list[Any]) -> None:
    """Under ``ddp_spawn`` (``trainer=ddp_cpu``) the fit ran in child processes: this one holds rank 0's
    weights but its callbacks never ran (an untouched EMA would evaluate the initial network). Take
    weights and the EMA from the last checkpoint rank 0 wrote."""
    from dhr.callbacks.ema import EMA
    from dhr.callbacks.last_checkpoint import LastCheckpoint
    from dhr.utils.checkpoint import read_checkpoint

    if trainer.world_size == 1 or getattr(trainer.strategy, "_start_method", "popen") == "popen":
        return
    saver = next((cb for cb in callbacks if isinstance(cb, LastCheckpoint)), None)
    last = saver.path if saver is not None else None
    if last is None or not last.is_file():
        log.warning("no last.ckpt of the spawned ranks: evaluating without their EMA")
        return
    state = read_checkpoint(last, "ckpt_path")
    model.load_state_dict(state["state_dict"])
    for cb in callbacks:
        if isinstance(cb, EMA):
            cb.on_load_checkpoint(trainer, model, state)


def log_config_to_wandb(cfg: DictConfig, loggers: list[Any]) -> None:
    """The whole resolved config in the W&B run (Lightning logs only the module's hyper-parameters)."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)


def report_expected(expected: Any, scores: dict[str, Any], split: str) -> dict[str, Any] | None:
    """Print the preset's published number next to this run's (``expected`` of ``conf/experiment``).

    ``scores``: the evaluation after the fit (mIoU, mFPR, mFNR) over the last validation's ``val/*``.
    """
    if not expected:
        return None
    from dhr.ops.report import compare_expected, expected_line

    check = compare_expected(scores.get(expected["metric"]), dict(expected), "expected")
    print("expected " + expected_line(check, f"{split}"))
    return check


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (and evaluate); returns the final metrics."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from dhr.callbacks.ema import EMA
    from dhr.utils.instantiate import instantiate_group

    check_launch(cfg)
    from dhr.engine import check_pretrained

    check_pretrained(cfg.model.get("backbone"))
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    loggers = instantiate_group(cfg.get("logger"))
    log_config_to_wandb(cfg, loggers)
    metrics: dict[str, Any] = {}
    try:
        trainer = fit_stages(cfg, model, datamodule, loggers, output_dir)
        if trainer is None:
            return metrics
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if hasattr(model, "report") and trainer.is_global_zero and not trainer.fast_dev_run:
            metrics.update(model.report(datamodule))
        if cfg.evaluate_after_fit and not trainer.fast_dev_run and trainer.is_global_zero and datamodule.val_split:
            from dhr.engine import configure_inference, evaluate_split, predict_to_folder

            ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
            if ema is not None:
                ema.copy_to(model)
            split = datamodule.val_split
            datamodule.predict_split = split
            pred_dir = output_dir / "predictions" / datamodule.info.split_dir_name(split)
            configure_inference(model, cfg.infer, cfg.get("crf"))
            predict_to_folder(model, datamodule, cfg.trainer, pred_dir, progress=cfg.callbacks.get("progress_bar"))
            scores = evaluate_split(datamodule, pred_dir, split, tag=cfg.tag)
            metrics.update({f"eval/{k}": v for k, v in scores.items() if isinstance(v, float)})
        if trainer.is_global_zero and not trainer.fast_dev_run:
            measured = {**{k.removeprefix("val/"): v for k, v in metrics.items() if k.startswith("val/")},
                        **{k.removeprefix("eval/"): v for k, v in metrics.items() if k.startswith("eval/")}}
            check = report_expected(cfg.get("expected"), measured, datamodule.info.split_dir_name(datamodule.val_split or "val"))
            if check is not None:
                metrics["expected/status"] = check["status"]
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()
    log.info("run directory: %s", output_dir)
    return metrics


_main = hydra_entry("train", run, returns=lambda metrics: metrics.get("val/mIoU"))  # sweepers optimise val/mIoU


def main() -> None:
    """Console script ``dhr-train``."""
    _main()


if __name__ == "__main__":
    main()
