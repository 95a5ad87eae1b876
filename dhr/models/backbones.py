"""timm ``features_only`` backbones with a chosen output stride and local weight files only.

ResNets at output stride 8/16 follow ``dhr-method.md`` §4: dilated stages use dilation 2 (layer3)
and 4 (layer4), and the first block of each dilated stage keeps dilation 1 (the official
PuzzleCAM/DHR ResNet; timm and torchvision give layer4's first block dilation 2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from dhr.errors import DHRError

RESNET_OUT_INDICES = (1, 2, 3, 4)  # C2 (stride 4), C3, C4, C5


def create_backbone(
    name: str,
    *,
    output_stride: int = 16,
    weights: str | os.PathLike | None = None,
    out_indices: tuple[int, ...] = RESNET_OUT_INDICES,
    **kwargs: Any,
) -> nn.Module:
    """A timm feature extractor returning a list of maps; ``.feature_info.channels()`` tells their widths.

    ``weights`` is a local checkpoint (torchvision or timm key layout); nothing is downloaded.
    """
    import timm

    if output_stride not in (8, 16, 32):
        raise DHRError(f"backbone.output_stride={output_stride}: use 8, 16 or 32")
    create_kwargs: dict[str, Any] = dict(features_only=True, out_indices=out_indices, output_stride=output_stride, **kwargs)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DHRError(f"backbone.weights={weights}: file not found; give the path of a local .pth/.safetensors file")
        create_kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    try:
        model = timm.create_model(name, **create_kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise DHRError(f"backbone.name={name!r}: timm has no such model") from None
        if weights:
            raise DHRError(
                f"backbone.weights={weights}: its keys or shapes do not fit timm {name!r} ({str(err).splitlines()[0]}); "
                "check that the file holds weights of this architecture"
            ) from None
        raise
    except (ValueError, KeyError) as err:  # unknown model names
        raise DHRError(f"backbone.name={name!r}: cannot create it with timm ({err})") from None
    if output_stride < 32 and hasattr(model, "layer4"):
        undilate_first_blocks(model)
    return model


def undilate_first_blocks(model: nn.Module) -> None:
    """Give the first block of every dilated ResNet stage dilation 1 on its 3x3 convs."""
    for stage_name in ("layer2", "layer3", "layer4"):
        stage = getattr(model, stage_name, None)
        if stage is None:
            continue
        first_block = next(iter(stage.children()))
        for module in first_block.modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and _dilation(module) > 1:
                module.dilation = (1, 1)
                module.padding = (1, 1)


def _dilation(module: nn.Module) -> int:
    return int(module.dilation[0]) if isinstance(module, nn.Conv2d) else 1


def backbone_from_cfg(cfg: dict[str, Any], **overrides: Any) -> tuple[nn.Module, int]:
    """(feature extractor, output stride) from a ``conf/backbone/*.yaml`` node (``name``, ``output_stride``, ...)."""
    cfg = dict(cfg)
    try:
        name, output_stride = cfg.pop("name"), int(cfg.pop("output_stride"))
    except KeyError as err:
        raise DHRError(f"backbone.{err.args[0]}: missing; a CNN backbone config needs name and output_stride") from None
    return create_backbone(name, output_stride=output_stride, **cfg, **overrides), output_stride
