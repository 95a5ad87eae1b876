"""``python -m dhr.features``: export CAUSE teacher-head features for DHR (``cause-method.md`` §10).

For every image of a split: scales (2.0, 1.0, 1.5, 0.5), each side of int(H s) x int(W s)
rounded up to a multiple of the patch size, bilinear resize; the image and its flip through
the frozen ViT and the teacher head; un-flip and average; resize to the grid of the first
scale and average over scales. Saved as fp16 (reduced_dim, h_f, w_f) at
``{data_root}/{DATA}/{split}/CAUSE/{id}.pt``, atomically, with a manifest; files that exist with
the expected shape are skipped, so an interrupted export resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dhr.utils.cli import hydra_entry

log = logging.getLogger(__name__)


def export_for_dhr(module: Any, path: str | Path) -> None:
    """Write the official DHR format: ``{"decoder": head_ema.* state, "codebook": K x D}``."""

    from dhr.utils.io import atomic_torch_save

    decoder = {f"head_ema.{k}": v.detach().cpu() for k, v in module.head_ema.state_dict().items()}
    atomic_torch_save(path, {"decoder": decoder, "codebook": module.codebook.detach().cpu()})


def load_teacher(ckpt: str | Path, backbone_cfg: dict[str, Any], num_queries: int | None = None) -> tuple[Any, Any]:
    """(frozen ViT, teacher head) from a dhr CAUSE checkpoint or an official ``CAUSE_{DATA}.pt``."""
    from dhr.errors import DHRError
    from dhr.models.cause_heads import SegmentTR
    from dhr.models.frozen import frozen_from_cfg
    from dhr.utils.checkpoint import read_checkpoint

    path = Path(ckpt)
    state = read_checkpoint(path, "ckpt")
    if "decoder" in state:  # official DHR format
        head_state = {k.removeprefix("head_ema."): v for k, v in state["decoder"].items()}
        codebook = state["codebook"]
    elif "state_dict" in state:
        if "codebook" not in state["state_dict"] or not any(k.startswith("head_ema.") for k in state["state_dict"]):
            tag = state.get("dhr_module", "not a CAUSE module")
            raise DHRError(f"ckpt={path}: a checkpoint of {tag}, not of CAUSE; pass the head or probe checkpoint "
                           "of a model=cause run (<run>/checkpoints/head/last.ckpt) or an official CAUSE_<DATA>.pt")
        head_state = {k.removeprefix("head_ema."): v for k, v in state["state_dict"].items() if k.startswith("head_ema.")}
        codebook = state["state_dict"]["codebook"]
    else:
        raise DHRError(f"{path}: neither a dhr CAUSE checkpoint nor the official {{decoder, codebook}} format")
    vit = frozen_from_cfg(backbone_cfg)
    if codebook.shape[1] != vit.embed_dim:
        raise DHRError(f"{path}: codebook is {codebook.shape[1]}-d but backbone {backbone_cfg['name']} gives "
                       f"{vit.embed_dim}-d tokens; pick the backbone the head was trained on")
    if "query_pos" not in head_state:
        raise DHRError(f"{path}: only TR heads are exported for DHR (no head_ema.query_pos)")
    reduced = head_state["tr.f1.weight"].shape[0]
    head = SegmentTR(dim=vit.embed_dim, num_queries=head_state["query_pos"].shape[0], reduced_dim=reduced,
                     ffn_dim=head_state["tr.linear1.weight"].shape[0], num_concepts=codebook.shape[0])
    try:
        head.load_state_dict(head_state, strict=True)
    except RuntimeError as err:
        raise DHRError(f"{path}: teacher head does not load strictly ({str(err).splitlines()[0]})") from None
    head.codebook.copy_(codebook)
    return vit, head.eval()


def extract(vit: Any, head: Any, image: Any, scales: Sequence[float] = (2.0, 1.0, 1.5, 0.5), flip: bool = True) -> Any:
    """(reduced_dim, h_f, w_f) features of one normalised image (1, 3, H, W), fp32.

    Each scale's sides are rounded up to the patch size; outputs are resized (bilinear,
    align_corners=False) to the first scale's token grid, then averaged over scales and flips.
    """
    from dhr.ops.inference import multiscale_flip
    from dhr.utils.grid import ceil_to

    p = vit.patch_size

    def patch_multiple(h: int, w: int, s: float) -> tuple[int, int]:
        return ceil_to(int(h * s), p), ceil_to(int(w * s), p)

    total, count = multiscale_flip(lambda x: head(vit(x)), image, scales, flip=flip, align_corners=False,
                                   input_size=patch_multiple)
    return (total / count)[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shard_of(cfg: DictConfig) -> tuple[int, int]:
    """(shard, number of shards) of this process: the keys, else the launcher's rank and size, else (0, 1)."""
    import os

    from dhr.errors import DHRError

    def pick(key: str, names: tuple[str, ...], default: int) -> int:
        value = cfg.get(key, "auto")
        if value == "auto":
            value = next((os.environ[n] for n in names if n in os.environ), default)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise DHRError(f"{key}={value!r}: use a whole number or auto") from None

    count = pick("num_shards", ("WORLD_SIZE", "SLURM_NTASKS"), 1)
    shard = pick("shard", ("RANK", "SLURM_PROCID"), 0)
    if count < 1 or not 0 <= shard < count:
        raise DHRError(f"shard={shard} of num_shards={count}: use 0 <= shard < num_shards")
    return shard, count


def run(cfg: DictConfig) -> dict[str, int]:
    import torch

    from dhr.data.layout import DatasetInfo, DatasetLayout
    from dhr.data.sources import ensure_dataset
    from dhr.data.uss import MANIFEST, feature_grid
    from dhr.engine import check_pretrained
    from dhr.errors import DHRError
    from dhr.utils.imagenet import normalize_rgb
    from dhr.utils.io import atomic_torch_save, atomic_write_json, read_rgb, refuse_inside

    check_pretrained(cfg.backbone)
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    info = DatasetInfo.from_cfg(dataset)
    ensure_dataset(cfg.paths.data_root, dataset)
    layout = DatasetLayout(cfg.paths.data_root, info)
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else layout.split_dir(cfg.split) / cfg.uss_name
    refuse_inside(out_dir, {what: folder for what, folder in layout.input_folders().items()
                            if folder.name in ("image", "mask", "xml")}, "out_dir (or uss_name)")
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    vit, head = load_teacher(cfg.ckpt, backbone)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    vit.to(device)
    head.to(device)
    manifest = {"ckpt": str(Path(cfg.ckpt).resolve()), "ckpt_sha256": _sha256(Path(cfg.ckpt)), "backbone": backbone,
                "scales": list(cfg.scales), "flip": bool(cfg.flip), "dtype": "float16", "patch": int(vit.patch_size),
                "shape": "(reduced_dim, ceil_p(int(2H))/p, ceil_p(int(2W))/p)"}
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file() and not cfg.overwrite:
        old = json.loads(manifest_path.read_text())
        if old.get("ckpt_sha256") != manifest["ckpt_sha256"] or old.get("scales") != manifest["scales"]:
            raise DHRError(f"{out_dir} holds features of another checkpoint or recipe ({old.get('ckpt')}); "
                           "pass overwrite=true to replace them or set uss_name to another folder")
    atomic_write_json(manifest_path, manifest)  # every shard writes the same one
    shard, num_shards = shard_of(cfg)
    paths = layout.image_paths(cfg.split)
    mine = dict(list(paths.items())[shard::num_shards])
    if num_shards > 1:  # under an sbatch with several tasks but one plain python, say so: the rest stays missing
        log.info("shard %d of %d (shard / num_shards, or the launcher's rank and size): %d of the %d images; "
                 "pass num_shards=1 to export all in this process", shard, num_shards, len(mine), len(paths))
    written = skipped = 0
    from dhr.utils.progress import track

    title = f"CAUSE features {info.name}/{cfg.split}" + (f" (shard {shard} of {num_shards})" if num_shards > 1 else "")
    for image_id, image_path in track(mine.items(), len(mine), title):
        target = out_dir / f"{image_id}.pt"
        image = read_rgb(image_path)
        expected = feature_grid(image.height, image.width, vit.patch_size, cfg.scales[0])
        if target.is_file() and not cfg.overwrite:  # an interrupted export resumes; a corrupt partial file is redone
            try:
                if tuple(torch.load(target, map_location="cpu", weights_only=True).shape[-2:]) == expected:
                    skipped += 1
                    continue
            except Exception:  # noqa: BLE001 - a corrupt partial file is recomputed
                pass
        x = torch.from_numpy(normalize_rgb(image)).permute(2, 0, 1)[None].to(device)
        feats = extract(vit, head, x, cfg.scales, cfg.flip).half().cpu()
        atomic_torch_save(target, feats.contiguous())
        written += 1
    log.info("CAUSE features: %d written, %d already present, in %s", written, skipped, out_dir)
    return {"written": written, "skipped": skipped}


_main = hydra_entry("features", run)


def main() -> None:
    """Console script ``dhr-features``."""
    _main()


if __name__ == "__main__":
    main()
