"""``python -m dhr.weights convert KIND SRC DST``: official weight files -> files dhr loads, strictly.

KIND:
  dhr          the DHR release's ``last.pth`` -> a dhr ``.ckpt`` for dhr.predict (``cam=drop``: plain
               DeepLabv3+, as the release infers; ``cam=keep``: the DHR module with its CAM head)
  cause        ``CAUSE_{DATA}.pt`` (DHR's format) or CAUSE's ``segment_tr.pth`` + ``codebook=modular.npy``
               -> ``{decoder, codebook}`` for dhr.features ckpt=
  dino|dinov2  DINO / DINOv2 checkpoints -> timm-layout ViT weights for backbone.weights=
  torchvision  torchvision ResNets (resnet101-5d3b4d8f.pth) -> timm-layout weights for backbone.weights=
Every file also loads directly by path (dhr.predict ckpt=last.pth, dhr.features ckpt=CAUSE_*.pt,
backbone.weights=dino_*.pth); convert checks it once and reports what matched.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
KINDS = ("dhr", "cause", "dino", "dinov2", "torchvision")
DEFAULT_BACKBONE = {"dino": "vit_s8", "dinov2": "dinov2_b14", "torchvision": "resnet101"}

USAGE = f"""usage: python -m dhr.weights convert KIND SRC DST [key=value ...]

KIND: {', '.join(KINDS)} (see docs/weights.md)
  dhr:         dataset=voc (its class list), cam=drop|keep, backbone=resnet101, any model.KEY=VALUE
  cause:       codebook=PATH (modular.npy, for CAUSE's own segment_tr.pth)
  dino/dinov2/torchvision: backbone=OPTION (conf/backbone/, default {DEFAULT_BACKBONE})
  overwrite=true replaces an existing DST.
Exit status: 0 converted, 2 bad input (the file, the keys that do not fit, the fix).
"""


def _save(obj: Any, dst: Path, overwrite: bool) -> None:

    from dhr.errors import DHRError
    from dhr.utils.io import atomic_torch_save

    if dst.exists() and not overwrite:
        raise DHRError(f"{dst}: exists; pass overwrite=true to replace it or choose another DST")
    atomic_torch_save(dst, obj)


def backbone_node(option: str) -> dict[str, Any]:
    """The plain node of ``conf/backbone/<option>.yaml`` (no weights), for building the architecture."""
    from dhr.errors import DHRError
    from dhr.utils.config import conf_node

    try:
        node = conf_node(f"backbone/{option}.yaml")
    except FileNotFoundError:
        raise DHRError(f"backbone={option}: no conf/backbone/{option}.yaml") from None
    node.pop("defaults", None)
    return {**node, "weights": None, "pretrained": False}


def convert(kind: str, src: Path, dst: Path, options: dict[str, str]) -> dict[str, Any]:
    """Convert one file; returns what was written and the key report."""
    import torch

    from dhr.errors import DHRError
    from dhr.utils.checkpoint import read_checkpoint

    if kind not in KINDS:
        raise DHRError(f"KIND={kind!r}: use one of {', '.join(KINDS)}")
    if not src.is_file():
        raise DHRError(f"SRC={src}: file not found")
    overwrite = options.pop("overwrite", "false").lower() == "true"
    allowed = {"dhr": {"cam", "dataset", "backbone"}, "cause": {"codebook"}}.get(kind, {"backbone"})
    unknown = sorted(k for k in options if k not in allowed and not (kind == "dhr" and k.startswith("model.")))
    if unknown:
        raise DHRError(f"{unknown}: not options of KIND={kind} (it takes {sorted(allowed)}); see python -m dhr.weights --help")
    if kind == "dhr":
        from dhr.engine import official_dhr_checkpoint

        cam = options.pop("cam", "drop")
        if cam not in ("drop", "keep"):
            raise DHRError(f"cam={cam}: use drop (plain DeepLabv3+, for prediction) or keep (the DHR module)")
        dataset = options.pop("dataset", "voc")
        backbone = options.pop("backbone", "resnet101")
        overrides = (f"dataset={dataset}", f"backbone={backbone}", *(f"{k}={v}" for k, v in options.items()))
        out, _ = official_dhr_checkpoint(src, keep_cam=cam == "keep", overrides=overrides)
        report = {"tensors": len(out["state_dict"]), "dropped": out["converted_from"]["dropped"], "module": out["dhr_module"]}
    elif kind == "cause":
        import numpy as np

        from dhr.models.official import official_cause

        book = options.pop("codebook", None)
        if book and not Path(book).is_file():
            raise DHRError(f"codebook={book}: file not found; give CAUSE's modular.npy")
        codebook = torch.from_numpy(np.load(book)) if book else None
        out = official_cause(read_checkpoint(src, "SRC"), str(src), codebook)
        report = {"tensors": len(out["decoder"]), "codebook": list(out["codebook"].shape)}
    elif kind in ("dino", "dinov2"):
        from dhr.models.vit import FrozenViT

        node = backbone_node(options.pop("backbone", DEFAULT_BACKBONE[kind]))
        for key in ("weights", "pretrained", "pretrained_tag"):
            node.pop(key, None)
        vit = FrozenViT(node.pop("name"), **node)
        vit.load_weights(src)  # strict, through timm's filter (DINOv2's mask_token dropped, SwiGLU renamed)
        out = vit.vit.state_dict()
        report = {"tensors": len(out)}
    else:
        import timm

        from dhr.models.official import load_strict, unwrap_state_dict

        node = backbone_node(options.pop("backbone", DEFAULT_BACKBONE[kind]))
        model = timm.create_model(node["name"], pretrained=False)
        state = unwrap_state_dict(read_checkpoint(src, "SRC"), str(src))
        own = model.state_dict()
        filled = [k for k in own if k.endswith("num_batches_tracked") and k not in state]  # pre-1.0 torchvision files
        state = {**{k: own[k] for k in filled}, **state}
        load_strict(model, state, str(src))
        out = model.state_dict()
        report = {"tensors": len(out), "filled_num_batches_tracked": len(filled)}
    _save(out, dst, overwrite)
    report.update(kind=kind, src=str(src), dst=str(dst))
    log.info("converted %s (%s): %s", src, kind, ", ".join(f"{k}={v}" for k, v in report.items() if k not in ("src", "dst")))
    return report


def main(argv: list[str] | None = None) -> None:
    """Console script ``dhr-weights``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    from dhr.errors import DHRError

    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        if argv[0] != "convert" or len(argv) < 4:
            raise DHRError("expected: python -m dhr.weights convert KIND SRC DST [key=value ...]")
        options = dict(a.split("=", 1) for a in argv[4:] if "=" in a)
        bad = [a for a in argv[4:] if "=" not in a]
        if bad:
            raise DHRError(f"{bad}: options are key=value")
        convert(argv[1], Path(argv[2]).expanduser(), Path(argv[3]).expanduser(), options)
    except DHRError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
