"""Which relabelling step helps or hurts? Score the rebuilt training masks against GT.

    python scripts/relabel_diagnostics.py ckpt=<dhr or cam run>/checkpoints/last.ckpt [batches=20] [uss=CAUSE,COLOUR] [crf=off] \
        [hydra overrides of the training run, e.g. experiment=synthetic_dhr]

Takes a trained ``model=dhr`` checkpoint (online weights, as training uses them) or a
``model=cam`` one (the DHR model at step 0 under ``model.init_from``), draws training
crops exactly as training does (same seeds, tags, USS maps, augmentation) and runs the
relabelling under several step sets and USS feature folders. For each it prints pixel accuracy
and mIoU of the rebuilt masks against the GT over the labelled pixels, next to the seeds. A
diagnostic only: GT is never used for training.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from dhr.conf_path import CONFIG_DIR
from dhr.ops.crf import PassThroughCRF
from dhr.ops.metrics import scores_from_confusion
from dhr.ops.relabel import relabel
from dhr.utils.checkpoint import MODULE_KEY, model_weights, module_class, read_checkpoint

SETTINGS = {"seeds": None, "1": [1], "1,2": [1, 2], "1,2,3": [1, 2, 3], "2": [2], "2,3": [2, 3]}


def confusion(pred: torch.Tensor, gt: torch.Tensor, n: int) -> np.ndarray:
    keep = (pred != 255) & (gt != 255)
    return torch.bincount(gt[keep] * n + pred[keep], minlength=n * n).view(n, n).numpy()


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a and a.split("=", 1)[0] in ("ckpt", "batches", "uss", "crf"))
    overrides = [a for a in sys.argv[1:] if a.split("=", 1)[0] not in ("ckpt", "batches", "uss", "crf")]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=synthetic_dhr", *overrides])
    state = read_checkpoint(args["ckpt"])
    if state.get(MODULE_KEY) == "dhr.modules.cam.CAMModule":  # the DHR model at step 0 when started from it
        module = instantiate(OmegaConf.to_container(cfg.model, resolve=True), init_from=args["ckpt"])
    else:
        module = module_class(state[MODULE_KEY], args["ckpt"])(**state["hyper_parameters"])
        module.load_state_dict(model_weights(state, args["ckpt"], prefer_ema=False))
    module.eval()
    n = module.hparams.num_classes
    uss_names = args.get("uss", cfg.model.dhr.uss_name).split(",")
    loaders = {}
    for name in uss_names:
        with open_dict(cfg):
            cfg.model.dhr.uss_name = name
            cfg.data.num_workers = 0
        dm = instantiate(OmegaConf.to_container(cfg.data, resolve=True))
        dm.prepare_data()
        dm.setup("fit")
        loaders[name] = dm
    base = module.relabel_cfg
    crf = module.crf_runner if args.get("crf", "on") == "on" else PassThroughCRF(module.crf_runner.params)
    totals: dict[str, np.ndarray] = {}
    for name, dm in loaders.items():
        torch.manual_seed(0)
        import random

        random.seed(0)
        for i, batch in enumerate(dm.train_dataloader()):
            if i >= int(args.get("batches", 20)):
                break
            with torch.no_grad():
                out = module.forward_train(batch["image"])
            for label, steps in SETTINGS.items():
                key = f"{name:>8} steps {label}" if steps else "seeds"
                if steps is None:
                    masks = batch["mask"]
                else:
                    cfg_r = dataclasses.replace(base, steps=tuple(steps))
                    masks = relabel(batch["mask"], cams=out["cams"], tags=batch["tags"], images=batch["image"],
                                    boxes=batch["crop_box"], uss=batch["uss"], wss_feats=[out["c4"], out["c5"]],
                                    num_classes=n, background_id=module.background_id, cfg=cfg_r,
                                    crf=crf).masks
                totals[key] = totals.get(key, 0) + confusion(masks, batch["gt"], n)
    module.teardown("fit")
    classes = list(cfg.dataset.classes)
    print(f"{'masks':<24} {'pAcc':>6} {'mIoU':>6}  " + " ".join(f"{c[:6]:>6}" for c in classes))
    for key, conf in totals.items():
        s = scores_from_confusion(conf)
        pacc = 100 * np.trace(conf) / conf.sum()
        print(f"{key:<24} {pacc:6.1f} {s.miou:6.1f}  " + " ".join(f"{v:6.1f}" for v in np.nan_to_num(s.iou)))


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit(print(__doc__))
    main()
