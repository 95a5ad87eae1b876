"""LightningDataModule over the official tree: validates up front, then serves crops and images."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from dhr.data.datasets import SegmentationDataset, pad_collate
from dhr.data.layout import MAX_LISTED_PROBLEMS, DatasetInfo, DatasetLayout
from dhr.data.sampler import EpochShuffle, EvalShard
from dhr.data.sources import ensure_dataset, ensure_simulated_seeds
from dhr.data.transforms import eval_transform, train_transform
from dhr.errors import DHRError

log = logging.getLogger(__name__)


class SegmentationDataModule(pl.LightningDataModule):
    """Training crops with GT (``masks="gt"``) or pseudo masks from a folder; whole images for val/predict.

    ``batch_size`` is the global batch: each of the trainer's processes gets an equal share.
    """

    def __init__(
        self,
        *,
        data_root: str,
        dataset: Mapping[str, Any],
        train_split: str,
        val_split: str | None,
        predict_split: str,
        masks: str,
        seeds_dir: str | None,
        batch_size: int,
        val_batch_size: int,
        num_workers: int,
        crop_size: int,
        resize_long: Sequence[int],
        flip: float,
        jitter: Sequence[float] | None,
        validate: str,
        on_error: str,
        with_tags: bool,
        with_gt: bool,
        uss_dir: str | None,
        uss_patch: int | None,
        seed: int = 1,
        simulated_seeds: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.dataset_cfg = dict(dataset)
        self.info = DatasetInfo.from_cfg(self.dataset_cfg)
        self.layout = DatasetLayout(data_root, self.info)
        self.train_split, self.val_split, self.predict_split = train_split, val_split, predict_split
        self.predict_skip: set[str] = set()  # ids a resumed dhr.predict has already written
        if masks not in ("gt", "none", "seeds"):
            raise DHRError(f"data.masks={masks!r}: use gt (GT masks), none (tags only) or seeds (with wss=...)")
        self.masks, self.seeds_dir = masks, seeds_dir
        self.simulated_seeds = dict(simulated_seeds) if simulated_seeds else None
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size)
        if self.batch_size < 1 or self.val_batch_size < 1:
            raise DHRError(f"data.batch_size={batch_size}, data.val_batch_size={val_batch_size}: use whole numbers >= 1 "
                           "(recipe.batch_size sets the training batch)")
        self.num_workers = min(int(num_workers), os.cpu_count() or 1)
        self.crop_size, self.resize_long, self.flip, self.jitter = int(crop_size), list(resize_long), flip, jitter
        if validate not in ("full", "quick", "off"):
            raise DHRError(f"data.validate={validate!r}: use full, quick or off")
        self.validate = validate
        if on_error not in ("fail", "skip"):
            raise DHRError(f"data.on_error={on_error!r}: use fail (stop on a bad file) or skip (leave it out, logged)")
        self.on_error = on_error
        self._bad_ids: dict[str, set[str]] = {}  # split -> ids the full check found broken
        self.with_tags = with_tags
        self.with_gt = with_gt
        self.uss_dir = Path(uss_dir) if uss_dir else None
        if self.uss_dir is not None and uss_patch is None:
            raise DHRError("data.uss_dir is set but data.uss_patch is not: set the ViT patch of the features")
        self.uss_patch = int(uss_patch) if uss_patch is not None else 0
        self.seed = int(seed)
        self.train_sampler: EpochShuffle | None = None  # the resumable shuffle, one share per rank
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches done), set by ExactResume on resume
        self.data_train: SegmentationDataset | None = None
        self.data_val: SegmentationDataset | None = None
        self.data_predict: SegmentationDataset | None = None

    # -- set-up ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        ensure_dataset(self.layout.data_root, self.dataset_cfg)
        if self.simulated_seeds and self.seeds_dir:  # wss=swallowed: written from the generated GT on first use
            ensure_simulated_seeds(self.layout.data_root, self.dataset_cfg, self.seeds_dir, **self.simulated_seeds)

    def train_mask_dir(self) -> Path | None:
        """GT masks (``gt``), no masks (``none``: image-level tags only), or the seed masks (``seeds``)."""
        if self.masks == "none":
            return None
        if self.masks == "gt":
            return self.layout.mask_dir(self.train_split)
        if not self.seeds_dir:
            raise DHRError("data.masks=seeds but no seeds are chosen: add wss=mars|rsepm|cam or wss=folder "
                           "wss.path=DIR (CAM seeds: python -m dhr.predict model=cam ckpt=... split=train)")
        folder = Path(self.seeds_dir)
        if not folder.is_dir():
            raise DHRError(f"data.seeds_dir={folder}: folder of seed masks not found; make them (CAM seeds: "
                           "python -m dhr.predict model=cam ckpt=<CAM run>/checkpoints/last.ckpt split=train, "
                           "or the whole chain: python -m dhr.pipeline) or point wss.path at your seed PNGs")
        return folder

    def _check(self, split: str, mask_dir: Path | None, tags: bool) -> list[str]:
        if self.validate == "off":
            return self.layout.ids(split)
        if self.validate == "quick":
            return self.layout.validate(split, masks=mask_dir is not None, tags=tags, mask_dir=mask_dir)
        if split not in self._bad_ids:
            self.full_check({split: (self._seed_dir(split, mask_dir), None)})
        return [i for i in self.layout.ids(split) if i not in self._bad_ids[split]]

    def _seed_dir(self, split: str, mask_dir: Path | None) -> Path | None:
        """The training masks' folder when it is not the split's GT (seeds, checked as such)."""
        return mask_dir if mask_dir is not None and mask_dir != self.layout.mask_dir(split) else None

    def full_check(self, splits: Mapping[str, tuple[Path | None, Path | None]]) -> None:
        """Decode every image, mask, tag, seed and feature file of ``splits`` (split -> (seed folder,
        feature folder)) as ``dhr.doctor`` does, and report every problem of every split in one error
        (``data.on_error=fail``) or leave the broken images out with a warning (``skip``). A split whose
        files have not changed since a clean check is not decoded again (``dhr/data/check_cache.py``)."""
        from dhr.data.check_cache import already_passed, fingerprint, remember_passed
        from dhr.data.doctor import check_split

        problems: list[str] = []
        for split, (seeds, uss) in splits.items():
            folder = self.layout.split_dir(split)
            if not (folder / "image").is_dir():
                self.layout.image_paths(split)  # raises the split-not-found error with the splits present
            key = fingerprint([folder / "image", folder / "mask", folder / "xml", folder / "cls_labels.json", seeds, uss],
                              {"classes": self.info.classes, "ignore": self.info.ignore_index, "patch": self.uss_patch})
            if already_passed(key):
                self._bad_ids[split] = set()
                continue
            report = check_split(self.layout, folder.name, seeds_dir=seeds, uss_dir=uss, uss_patch=self.uss_patch or 14)
            for warning in report.warnings:
                log.warning(warning)
            if not report.errors:
                remember_passed(key)
            self._bad_ids[split] = set(report.bad_ids)
            problems += report.errors
        if not problems:
            return
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        bad = sum(len(v) for v in self._bad_ids.values())
        if self.on_error == "fail":
            raise DHRError(f"{len(problems)} problem(s) in {self.layout.root} ({', '.join(splits)}), found before "
                           f"training:\n  {listed}{more}\nfix or remove these files (python -m dhr.doctor lists "
                           "everything), or pass data.on_error=skip to train without them")
        log.warning("data.on_error=skip: leaving out %d image(s) with problems:\n  %s%s", bad, listed, more)

    def setup(self, stage: str | None = None) -> None:
        self.layout.check_class_json()  # a class file beside the data that contradicts dataset=
        if stage in (None, "fit") and self.data_train is None:
            world = self.trainer.world_size if self.trainer is not None else 1
            if self.batch_size % world:
                raise DHRError(f"batch_size={self.batch_size} is not divisible by the {world} training processes")
            mask_dir = self.train_mask_dir()
            if self.uss_dir is not None:
                self._check_uss_folder()  # a missing folder or another patch: one clear error, not one per image
            if self.validate == "full":  # every problem of train and val in one list, before any step
                wanted = {self.train_split: (self._seed_dir(self.train_split, mask_dir), self.uss_dir)}
                if self.val_split:
                    wanted[self.val_split] = (None, None)
                self.full_check({k: v for k, v in wanted.items() if k not in self._bad_ids})
            ids = self._check(self.train_split, mask_dir, self.with_tags)
            tags = self.layout.read_tags(self.train_split, ids) if self.with_tags else None
            if self.with_tags and tags is not None:
                untagged = [i for i in ids if not tags[i]]
                ids = [i for i in ids if tags[i]]  # images without any tag cannot teach a classifier
                if untagged:
                    log.warning("%s: %d of %d training images have no tag and are left out (first: %s)",
                                self.layout.split_dir(self.train_split), len(untagged), len(untagged) + len(ids),
                                ", ".join(untagged[:3]))
                if not ids:
                    raise DHRError(f"{self.layout.split_dir(self.train_split)}: no training image has a tag")
            mask_dirs = {"mask": mask_dir} if mask_dir else {}
            gt_dir = self.layout.mask_dir(self.train_split)
            if self.with_gt and mask_dir != gt_dir and gt_dir.is_dir():
                mask_dirs["gt"] = gt_dir  # diagnostics only (agreement of the training masks with GT)
            uss_dim = self._check_uss(ids) if self.uss_dir is not None else None
            self.data_train = SegmentationDataset(
                self.layout, self.train_split, ids=ids, mask_dirs=mask_dirs or None, tags=tags,
                uss_dir=self.uss_dir, uss_patch=self.uss_patch, uss_dim=uss_dim, on_error=self.on_error, reseed=self.seed,
                transform=train_transform(crop_size=self.crop_size, resize_long=self.resize_long, flip=self.flip,
                                          jitter=self.jitter, ignore_index=self.info.ignore_index),
            )
        if stage in (None, "fit", "validate") and self.val_split and self.data_val is None:
            self.data_val = self._whole_images(self.val_split, with_masks=True)
        if stage == "predict" and self.data_predict is None:
            self.data_predict = self._whole_images(self.predict_split, with_masks=False, with_tags=self.with_tags,
                                                   skip=self.predict_skip)

    def _check_uss_folder(self) -> Path:
        """The feature folder exists and was exported with the configured ViT patch."""
        from dhr.data.uss import read_manifest

        folder = self.uss_dir
        assert folder is not None
        if not folder.is_dir():
            raise DHRError(f"data.uss_dir={folder}: USS feature folder not found; export them with "
                           f"`python -m dhr.features ckpt=<CAUSE ckpt> split={self.train_split}`")
        patch = read_manifest(folder).get("patch")
        if patch is not None and int(patch) != self.uss_patch:
            raise DHRError(f"{folder}: features were exported with patch {patch} but model.dhr.uss_patch={self.uss_patch}; "
                           f"set model.dhr.uss_patch={patch}")
        return folder

    def _check_uss(self, ids: Sequence[str]) -> int:
        """Every training image has a feature file, of the expected grid; returns the feature dimension."""
        from dhr.data.uss import load_uss
        from dhr.utils.io import read_rgb

        folder = self._check_uss_folder()
        hint = "export them with `python -m dhr.features ckpt=<CAUSE ckpt> split=" + self.train_split + "`"
        missing = [i for i in ids if not (folder / f"{i}.pt").is_file()]
        if missing:
            raise DHRError(f"{folder}: {len(missing)} of {len(ids)} training images have no USS features "
                           f"(first: {missing[:3]}); {hint}")
        first = ids[0]
        image = read_rgb(self.layout.image_paths(self.train_split)[first])
        return int(load_uss(folder / f"{first}.pt", (image.height, image.width), self.uss_patch).shape[0])

    def _whole_images(self, split: str, *, with_masks: bool, with_tags: bool = False,
                      skip: set[str] | None = None) -> SegmentationDataset:
        mask_dir = self.layout.mask_dir(split) if with_masks else None
        ids = [i for i in self._check(split, mask_dir, with_tags) if not skip or i not in skip]
        tags = self.layout.read_tags(split, ids) if with_tags else None
        return SegmentationDataset(self.layout, split, ids=ids, transform=eval_transform(),
                                   mask_dirs={"mask": mask_dir} if mask_dir else None, tags=tags, on_error=self.on_error)

    # -- loaders --------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        """(rank, number of processes) of the attached trainer; (0, 1) without one."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _per_device(self) -> int:
        return self.batch_size // self._world()[1]

    def _loader(self, data: SegmentationDataset, *, batch_size: int, shuffle: bool, drop_last: bool, collate=None,
                sampler=None) -> DataLoader:
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0, collate_fn=collate,
                          sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        assert self.data_train is not None, "call setup('fit') first"
        rank, world = self._world()
        if len(self.data_train) < self.batch_size:
            raise DHRError(f"data.batch_size={self.batch_size} (recipe.batch_size) is more than the {len(self.data_train)} "
                           f"training images; lower it")
        sampler = self.train_sampler
        if sampler is None or (sampler.n, sampler.rank, sampler.world) != (len(self.data_train), rank, world):
            sampler = self.train_sampler = EpochShuffle(len(self.data_train), self.seed, batch_size=self.batch_size,
                                                        rank=rank, world=world)
        if self.resume_at is not None:  # worker processes may draw indices before Lightning's set_epoch
            epoch, batches = self.resume_at
            sampler.epoch = epoch
            sampler.resume, self.resume_at = (epoch, batches * self._per_device()), None
        return self._loader(self.data_train, batch_size=self._per_device(), shuffle=False, drop_last=True,
                            sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        if self.data_val is None:
            return []
        rank, world = self._world()
        sampler = EvalShard(len(self.data_val), rank=rank, world=world) if world > 1 else None
        return self._loader(self.data_val, batch_size=self.val_batch_size, shuffle=False, drop_last=False,
                            collate=functools.partial(pad_collate, ignore_index=self.info.ignore_index), sampler=sampler)

    def predict_dataloader(self) -> DataLoader:
        assert self.data_predict is not None, "call setup('predict') first"
        return self._loader(self.data_predict, batch_size=1, shuffle=False, drop_last=False,
                            collate=functools.partial(pad_collate, ignore_index=self.info.ignore_index))
