"""Frozen ViT backbones (DINO / DINOv2 through timm) returning patch-token maps.

Features are the last-layer tokens after the final norm with the prefix (CLS, register) tokens
removed, reshaped to (B, D, h, w) (``cause-method.md`` §3). Weights come from a local file in
the official DINO/DINOv2 key layout; nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dhr.errors import DHRError


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise DHRError(f"backbone.weights={path}: cannot read the checkpoint ({str(err).splitlines()[0]})") from None
    for key in ("teacher", "state_dict", "model", "target_encoder"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def create_vit(name: str, *, init_seed: int = 0, **kwargs: Any) -> nn.Module:
    """A timm ViT without classifier, any input size; a fixed seed makes an unweighted one the same
    in training, export and resume (and gives DINO's student its start)."""
    import timm

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            return timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)
    except RuntimeError as err:
        raise DHRError(f"backbone.name={name!r}: cannot create it with timm ({err})") from None


class FrozenViT(nn.Module):
    """A timm ViT in eval mode without gradients; ``forward`` gives (B, D, h, w) patch tokens."""

    def __init__(self, name: str, *, weights: str | os.PathLike | None = None, init_seed: int = 0, **kwargs: Any) -> None:
        super().__init__()
        self.vit = create_vit(name, init_seed=init_seed, **kwargs)
        if weights:
            self.load_weights(weights)
        self.vit.eval()
        self.vit.requires_grad_(False)
        self.patch_size = int(self.vit.patch_embed.patch_size[0])
        self.embed_dim = int(self.vit.embed_dim)

    def load_weights(self, weights: str | os.PathLike) -> None:
        """Load an official DINO / DINOv2 file strictly (timm's filter renames DINOv2 keys)."""
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DHRError(f"backbone.weights={weights}: file not found; give the path of a local DINO/DINOv2 checkpoint")
        state = _read_state_dict(path)
        try:
            from timm.models.vision_transformer import checkpoint_filter_fn

            state = checkpoint_filter_fn(state, self.vit)
        except (ImportError, KeyError, RuntimeError):
            pass
        try:
            missing, unexpected = self.vit.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise DHRError(f"backbone.weights={path}: shapes do not fit this ViT ({str(err).splitlines()[-1].strip()}); "
                           "check backbone.name matches the checkpoint") from None
        if missing or unexpected:
            raise DHRError(
                f"backbone.weights={path}: keys do not fit this ViT (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}); check backbone.name matches the checkpoint"
            )

    def train(self, mode: bool = True) -> FrozenViT:
        super().train(mode)
        self.vit.eval()  # always frozen
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens :]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)


def vit_from_cfg(cfg: dict[str, Any]) -> FrozenViT:
    """The frozen ViT of a ``conf/backbone/*.yaml`` node (``name`` plus timm keyword arguments)."""
    from dhr.models.pretrained import resolve_pretrained

    cfg = resolve_pretrained(cfg)
    return FrozenViT(cfg.pop("name"), **cfg)
