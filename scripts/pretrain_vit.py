"""Pretrain a small ViT without labels, as a local stand-in for DINO weights.

    python scripts/pretrain_vit.py out=<file.pth> [steps=800] [batch=32] [lr=1e-3] [seed=0] \
        [hydra overrides, e.g. experiment=synthetic_cause backbone=vit_tiny]

CAUSE expects a self-supervised backbone (DINO); on a machine without DINO weights and no
network, this trains the configured ViT (default: the tiny one) on the training images of
the configured dataset with **dense SwAV**: two random crops of each image, the token of one
view at an image location must predict the Sinkhorn-balanced prototype assignment of the other
view's feature at the same location (and vice versa). No label, tag or mask is read. The
weights are written atomically in the timm / DINO key layout, so
``backbone.weights=<file.pth>`` loads them like an official DINO file; an existing file is
never overwritten.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from dhr.conf_path import CONFIG_DIR  # noqa: E402
from dhr.models.dense_swav import DenseSwAV  # noqa: E402
from dhr.models.vit import vit_from_cfg  # noqa: E402
from dhr.utils.io import atomic_write_bytes  # noqa: E402

ARGS = ("out", "steps", "batch", "lr", "seed", "view", "prototypes")


def main() -> None:
    args = dict(a.split("=", 1) for a in sys.argv[1:] if a.split("=", 1)[0] in ARGS)
    overrides = [a for a in sys.argv[1:] if a.split("=", 1)[0] not in ARGS]
    if "out" not in args:
        sys.exit("usage: pretrain_vit.py out=<file.pth> [steps=800] [batch=32] [lr=1e-3] [seed=0] [overrides]")
    out = Path(args["out"]).expanduser()
    if out.exists():
        sys.exit(f"{out} exists: pretrain_vit.py never overwrites weights; remove it or choose another out=")
    steps, batch, lr = int(args.get("steps", 800)), int(args.get("batch", 32)), float(args.get("lr", 1e-3))
    torch.manual_seed(int(args.get("seed", 0)))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=synthetic_cause", f"data.batch_size={batch}", *overrides])
    datamodule = instantiate(cfg.data)  # its batches carry labels for CAUSE's monitoring probe: never read here
    datamodule.prepare_data()
    datamodule.setup("fit")
    backbone = dict(cfg.backbone)
    vit = vit_from_cfg(backbone).vit.train().requires_grad_(True)
    model = DenseSwAV(vit, vit.embed_dim, prototypes=int(args.get("prototypes", 32)))
    view = int(args.get("view", 96))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    start, step = time.time(), 0
    while step < steps:
        for batch_data in datamodule.train_dataloader():
            loss = model.loss(batch_data["image"], view)
            if not torch.isfinite(loss):
                sys.exit(f"dense SwAV loss is {loss.item()} at step {step}: lower lr= (now {lr})")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 100 == 0 or step == steps:
                print(f"step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
            if step == steps:
                break
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in vit.state_dict().items()}, buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    print(f"wrote {out}: use backbone.weights={out}")


if __name__ == "__main__":
    main()
