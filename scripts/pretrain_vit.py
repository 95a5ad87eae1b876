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
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from dhr.conf_path import CONFIG_DIR  # noqa: E402
from dhr.models.vit import FrozenViT  # noqa: E402
from dhr.utils.io import atomic_write_bytes  # noqa: E402

ARGS = ("out", "steps", "batch", "lr", "seed", "view", "prototypes")


def random_views(x: torch.Tensor, size: int, scale: float = 0.75) -> tuple[torch.Tensor, torch.Tensor]:
    """A random square crop (``scale`` of each side, random position, random h-flip) resized to ``size``.

    Returns the views and their affine maps (B, 2, 3) from view coordinates to image
    coordinates, both in [-1, 1] (``affine_grid`` convention).
    """
    b = len(x)
    theta = torch.zeros(b, 2, 3, device=x.device)
    flip = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = (torch.rand(b, 2, device=x.device) * 2 - 1) * (1 - scale)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    views = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    gain = torch.empty(b, 1, 1, 1, device=x.device).uniform_(0.8, 1.2)
    shift = torch.empty(b, 1, 1, 1, device=x.device).uniform_(-0.2, 0.2)
    return views * gain + shift, theta


def correspondence(theta_a: torch.Tensor, theta_b: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each token centre of view A (g x g grid) lies in view B: (B, g*g, 2) coordinates and a validity mask."""
    u = (torch.arange(g, device=theta_a.device) + 0.5) / g * 2 - 1
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).view(1, -1, 3)
    image = pts @ theta_a.transpose(1, 2)  # (B, N, 2) image coordinates
    lin, shift = theta_b[:, :, :2], theta_b[:, :, 2]
    in_b = torch.linalg.solve(lin.unsqueeze(1), (image - shift.unsqueeze(1)).unsqueeze(-1)).squeeze(-1)
    return in_b, (in_b.abs() <= 1 - 1 / g).all(-1)


@torch.no_grad()
def balanced_assignment(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp: soft codes (N, K) whose prototypes share the batch equally.

    Not ``dhr.ops.sinkhorn``: that is DHR's transport (cost 1 - S, unit marginals, stopping
    test, min-max of the plan); SwAV runs a fixed 3 iterations towards equal prototype mass.
    """
    q = torch.exp((scores - scores.max()) / eps).t()
    q /= q.sum()
    k, n = q.shape
    for _ in range(iters):
        q /= q.sum(1, keepdim=True) * k
        q /= q.sum(0, keepdim=True) * n
    return (q * n).t()


class DenseSwAV(nn.Module):
    """Projection MLP + prototypes over the ViT's patch tokens; the loss of one pair of views."""

    def __init__(self, vit: nn.Module, dim: int, prototypes: int = 32, temperature: float = 0.1) -> None:
        super().__init__()
        self.vit = vit
        self.proj = nn.Sequential(nn.Linear(dim, 256), nn.GELU(), nn.Linear(256, 64))
        self.prototypes = nn.Linear(64, prototypes, bias=False)
        self.temperature = temperature

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
        p = self.vit.patch_embed.patch_size[0]
        return t.transpose(1, 2).reshape(len(x), -1, x.shape[-2] // p, x.shape[-1] // p)

    def loss(self, images: torch.Tensor, view: int) -> torch.Tensor:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        view_a, theta_a = random_views(images, view)
        view_b, theta_b = random_views(images, view)
        fa, fb = self.tokens(view_a), self.tokens(view_b)
        where, valid = correspondence(theta_a, theta_b, fa.shape[-1])
        fb_at = F.grid_sample(fb, where.unsqueeze(2), mode="bilinear", align_corners=False).squeeze(-1).transpose(1, 2)
        za = F.normalize(self.proj(fa.flatten(2).transpose(1, 2)[valid]), dim=-1)
        zb = F.normalize(self.proj(fb_at[valid]), dim=-1)
        pa, pb = self.prototypes(za), self.prototypes(zb)
        qa, qb = balanced_assignment(pa), balanced_assignment(pb)
        swapped = (qa * F.log_softmax(pb / self.temperature, 1)).sum(1) + (qb * F.log_softmax(pa / self.temperature, 1)).sum(1)
        return -0.5 * swapped.mean()


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
    vit = FrozenViT(backbone.pop("name"), **backbone).vit.train().requires_grad_(True)
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
