"""DHR online relabelling (``dhr-method.md`` §5) as tensor functions over a whole batch.

Step 1 restores vanished seeds with OT over the model's CAMs; Step 2 builds USS prototypes and
cosine heat-maps; Step 3 splits USS-similar classes with the WSS (C4/C5) features, rebalances
globally, samples the maps at the crop's pixels and runs the dense CRF. Everything but the CRF
is batched: classes are a fixed channel axis with a per-sample presence mask, cells a fixed
g x g grid with a validity mask, and OT runs through :func:`dhr.ops.sinkhorn.sinkhorn_plan`
with row/column masks. The CRF runs through :class:`dhr.ops.crf.CRFRunner`: batched on the
batch's device with the torch backend, in CPU worker processes with pydensecrf.

Conventions: crop boxes are (y0, x0, y1, x1) on the S x S canvas; masks hold class ids and 255.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dhr.errors import DHRError
from dhr.ops.argmax import argmax
from dhr.ops.crf import CRFRunner, denormalize
from dhr.ops.sinkhorn import sinkhorn_plan
from dhr.utils.config import conf_node, from_mapping, merge
from dhr.utils.grid import ceil_to, working_grid  # noqa: F401 - working_grid is part of this API

IGNORE = 255
WS_LAYERS = ("c2", "c3", "c4", "c5")


@dataclass(frozen=True)
class Step1Config:
    """``model.dhr.step1``: how OT-restored seeds become labels (§5.2, §10 #7)."""

    bg_mode: str  # power | constant | official
    bg_gamma: float
    bg_value: float | None
    paste: str  # all | missing

    def __post_init__(self) -> None:
        if self.bg_mode not in ("power", "constant", "official"):
            raise DHRError(f"model.dhr.step1.bg_mode={self.bg_mode!r}: use power, constant or official")
        if self.bg_mode == "constant" and self.bg_value is None:
            raise DHRError("model.dhr.step1.bg_mode=constant needs model.dhr.step1.bg_value (a background score in [0, 1])")
        if self.paste not in ("all", "missing"):
            raise DHRError(f"model.dhr.step1.paste={self.paste!r}: use all or missing")


@dataclass(frozen=True)
class OTConfig:
    """``model.dhr.ot``: the entropic Sinkhorn of §6."""

    eps: float
    max_iter: int
    tol: float
    log_domain: bool

    def __post_init__(self) -> None:
        if not self.eps > 0:
            raise DHRError(f"model.dhr.ot.eps={self.eps!r}: use a positive number")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise DHRError(f"model.dhr.ot.max_iter={self.max_iter!r}: use a whole number >= 1")


@dataclass(frozen=True)
class RelabelConfig:
    """The ``model.dhr`` node (``conf/model/dhr.yaml``), 1:1: the switches of §5.6 and §11."""

    enabled: bool
    steps: tuple[int, ...]
    tau: float
    global_ot: bool
    uss_name: str
    uss_patch: int
    ws_layers: tuple[str, ...]
    cam_eps: float
    mm_eps: float
    cell_scope: str  # valid | all
    step1: Step1Config
    ot: OTConfig

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
        object.__setattr__(self, "ws_layers", tuple(str(x) for x in self.ws_layers))
        if not set(self.steps) <= {1, 2, 3}:
            raise DHRError(f"model.dhr.steps={list(self.steps)}: use a subset of [1, 2, 3]")
        if not isinstance(self.tau, (int, float)) or not 0.0 <= self.tau <= 1.0:
            raise DHRError(f"model.dhr.tau={self.tau!r}: use a correlation threshold in [0, 1]")
        if self.cell_scope not in ("valid", "all"):
            raise DHRError(f"model.dhr.cell_scope={self.cell_scope!r}: use valid or all")
        unknown = sorted(set(self.ws_layers) - set(WS_LAYERS))
        if unknown:
            raise DHRError(f"model.dhr.ws_layers has {unknown}; use backbone maps among {list(WS_LAYERS)}")
        if not isinstance(self.uss_patch, int) or self.uss_patch < 1:
            raise DHRError(f"model.dhr.uss_patch={self.uss_patch!r}: use the ViT patch size (a whole number)")
        for key in ("cam_eps", "mm_eps"):
            if getattr(self, key) < 0:
                raise DHRError(f"model.dhr.{key}={getattr(self, key)!r}: use a floor >= 0")

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> RelabelConfig:
        return from_mapping(cls, cfg, "model.dhr")

    @classmethod
    def defaults(cls, **overrides: Any) -> RelabelConfig:
        """``model.dhr`` of ``conf/model/dhr.yaml`` with ``overrides`` (nested dicts merge): outside Hydra."""
        return cls.from_cfg(merge(conf_node("model/dhr.yaml", "model.dhr"), overrides))


# -- grid geometry -------------------------------------------------------------------------------
def cell_centres(canvas: int, g: int, device: torch.device | None = None) -> torch.Tensor:
    """Continuous canvas coordinate of each cell centre, (c + 0.5) S / g."""
    return (torch.arange(g, device=device, dtype=torch.float64) + 0.5) * canvas / g


def valid_cells(crop_box: torch.Tensor, canvas: int, g: int, scope: str = "valid") -> torch.Tensor:
    """(B, g, g) cells whose centre lies inside the crop box (all cells with ``scope='all'``)."""
    b = crop_box.shape[0]
    if scope == "all":
        return torch.ones(b, g, g, dtype=torch.bool, device=crop_box.device)
    centre = cell_centres(canvas, g, crop_box.device)
    box = crop_box.to(torch.float64)
    rows = (centre[None] >= box[:, 0:1]) & (centre[None] < box[:, 2:3])
    cols = (centre[None] >= box[:, 1:2]) & (centre[None] < box[:, 3:4])
    return rows[:, :, None] & cols[:, None, :]


def opencv_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of OpenCV ``INTER_NEAREST``: floor(dst * in / out), capped at in - 1."""
    return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


def legacy_nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of PyTorch legacy ``nearest`` (read from F.interpolate itself, so it is exact)."""
    src = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in)
    return F.interpolate(src, size=n_out, mode="nearest").view(-1).long()


def majority_vote(masks: torch.Tensor, g: int, patch: int, num_classes: int) -> torch.Tensor:
    """(B, g, g) cell labels: the official vote on the mask resized to ceil_p(S) (OpenCV nearest).

    Cell r covers rows [int(r P / g), int(r P / g) + P // g) of the resized mask; 255 votes as
    its own label; ties go to the smallest label.
    """
    b, h, w = masks.shape
    ph, pw = ceil_to(h, patch), ceil_to(w, patch)
    ry = torch.from_numpy(opencv_nearest_index(h, ph)).to(masks.device)
    rx = torch.from_numpy(opencv_nearest_index(w, pw)).to(masks.device)
    ly, lx = ph // g, pw // g
    start_y = torch.tensor([int(r * ph / g) for r in range(g)], device=masks.device)
    start_x = torch.tensor([int(c * pw / g) for c in range(g)], device=masks.device)
    rows = ry[start_y[:, None] + torch.arange(ly, device=masks.device)]  # (g, ly) source rows
    cols = rx[start_x[:, None] + torch.arange(lx, device=masks.device)]
    patches = masks[:, rows[:, :, None, None], cols[None, None, :, :]]  # (B, g, ly, g, lx)
    votes = patches.permute(0, 1, 3, 2, 4).reshape(b, g, g, ly * lx).long()
    votes = torch.where(votes == IGNORE, num_classes, votes.clamp(0, num_classes))
    counts = torch.zeros(b, g, g, num_classes + 1, dtype=torch.int32, device=masks.device)
    counts.scatter_add_(3, votes, torch.ones_like(votes, dtype=torch.int32))
    winner = counts.argmax(3)  # first maximum = smallest label
    return torch.where(winner == num_classes, IGNORE, winner)


def as_cells(feats: torch.Tensor) -> torch.Tensor:
    """(B, D, g, g) → (B, g*g, D) float32; free for channels-last maps (reductions over D run fastest so)."""
    b, d = feats.shape[:2]
    return feats.float().permute(0, 2, 3, 1).reshape(b, -1, d)


def present_index(present: torch.Tensor) -> torch.Tensor:
    """(B, K) ids of each sample's present classes (B, C), in class order, padded with its first one (K: the
    most any sample has, at least 1). A crop holds 3-4 of VOC's 21 classes: matrix products over these alone
    do a fifth of the work, and a padded id repeats a column, which writes the same value twice."""
    counts = present.sum(1)
    k = max(int(counts.max()), 1) if present.numel() else 1
    order = torch.argsort((~present).to(torch.uint8), dim=1, stable=True)[:, :k]  # present classes first
    return torch.where(torch.arange(k, device=present.device)[None] < counts[:, None], order, order[:, :1])


def prototypes(feats: torch.Tensor, cell_labels: torch.Tensor, valid: torch.Tensor,
               num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (B, C, D) of grid features (B, D, g, g) over labelled valid cells, and presence (B, C).

    One-hot (K x cells) @ features (cells x D) / counts over the present classes: no loop over cells;
    absent classes get zero vectors.
    """
    cells = as_cells(feats) if feats.ndim == 4 else feats
    b, _, d = cells.shape
    labels = torch.where(valid & (cell_labels != IGNORE), cell_labels, num_classes).view(b, -1)
    counts = torch.zeros(b, num_classes + 1, dtype=torch.long, device=cells.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    counts = counts[:, :num_classes]
    present = counts > 0
    index = present_index(present)  # (B, K)
    onehot = (labels[:, :, None] == index[:, None, :]).to(cells.dtype)  # (B, cells, K)
    means = (onehot.transpose(1, 2) @ cells) / counts.gather(1, index).clamp_min(1)[..., None].to(cells.dtype)
    out = cells.new_zeros(b, num_classes, d)
    out.scatter_(1, index[:, :, None].expand(-1, -1, d), means)
    return out, present


def minmax(maps: torch.Tensor, valid: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-channel min-max over valid cells of (B, C, g, g) maps, floored at ``eps``, clipped to [0, 1]."""
    v = valid[:, None]
    lo = torch.where(v, maps, float("inf")).amin(dim=(2, 3), keepdim=True)
    hi = torch.where(v, maps, float("-inf")).amax(dim=(2, 3), keepdim=True)
    denom = (hi - lo).clamp_min(eps) if eps > 0 else hi - lo
    out = ((maps - lo) / denom).clamp(0, 1)
    return torch.where(v, out, 0.0)


def cosine_heatmaps(feats: torch.Tensor, protos: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(B, C, g, g) cosine of every cell's feature (B, D, g, g) with every present class's prototype (B, C, D);
    zero for the classes ``present`` (B, C) lacks (their prototypes are zero vectors)."""
    b, _, h, w = feats.shape
    cells = as_cells(feats)
    index = present_index(present)  # (B, K)
    chosen = protos.float().gather(1, index[:, :, None].expand(-1, -1, protos.shape[2]))  # (B, K, D)
    dots = cells @ chosen.transpose(1, 2)  # (B, cells, K)
    cos = dots / (cells.norm(dim=2, keepdim=True).clamp_min(1e-12) * chosen.norm(dim=2)[:, None].clamp_min(1e-12))
    out = cos.new_zeros(b, cells.shape[1], protos.shape[1])
    out.scatter_(2, index[:, None, :].expand(-1, cells.shape[1], -1), cos)
    return out.transpose(1, 2).reshape(b, -1, h, w)


def transport(maps: torch.Tensor, valid: torch.Tensor, classes: torch.Tensor, ot: dict) -> torch.Tensor:
    """OT plan for (B, C, g, g) maps over the valid cells and the given classes (B, C), same layout."""
    b, c, h, w = maps.shape
    plan = sinkhorn_plan(maps.flatten(2).transpose(1, 2), valid.view(b, -1), classes, **ot)
    return plan.transpose(1, 2).reshape(b, c, h, w)


# -- CRF glue ------------------------------------------------------------------------------------
def crf_images(images: torch.Tensor, crf: CRFRunner) -> torch.Tensor | None:
    """uint8 (B, S, S, 3) de-normalised canvases on their device, made once for Steps 1 and 2-3; None when the
    CRF reads no image (a pass-through for diagnostics and benchmarks)."""
    return denormalize(images.detach(), crf.params.denorm) if crf.reads_images else None


def crops(rgb: torch.Tensor | None, rows: list[int], boxes: list[tuple[int, int, int, int]]) -> list[torch.Tensor | None]:
    """The crop of each of ``rows`` of the de-normalised canvases (Nones without them)."""
    if rgb is None:
        return [None] * len(rows)
    return [rgb[i, y0:y1, x0:x1] for i, (y0, x0, y1, x1) in zip(rows, boxes, strict=True)]


# -- Step 1 --------------------------------------------------------------------------------------
def normalised_cams(cams: torch.Tensor, tags: torch.Tensor, eps: float) -> torch.Tensor:
    """ReLU, divide by each channel's maximum over the full canvas map (floored), zero absent classes."""
    a = F.relu(cams.float())
    return a / a.amax(dim=(2, 3), keepdim=True).clamp_min(eps) * tags[:, :, None, None].float()


def cam_box(box: Sequence[int], cam_hw: tuple[int, int], canvas: int) -> tuple[int, int, int, int]:
    """Crop box in CAM cells, floor(coord * size / S) at both ends, at least one cell."""
    h, w = cam_hw
    y0, x0, y1, x1 = (int(v) for v in box)
    cy0, cx0 = y0 * h // canvas, x0 * w // canvas
    cy1, cx1 = max(y1 * h // canvas, cy0 + 1), max(x1 * w // canvas, cx0 + 1)
    return cy0, cx0, min(cy1, h), min(cx1, w)


def step1_cams(cams: torch.Tensor, tags: torch.Tensor, boxes: torch.Tensor, canvas: int,
               cfg: RelabelConfig) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """Normalised CAMs, OT-reweighted over each crop's CAM cells and tagged classes, and those cell boxes."""
    b, _, h, w = cams.shape
    a = normalised_cams(cams, tags, cfg.cam_eps)
    cell_boxes = [cam_box(box, (h, w), canvas) for box in boxes.tolist()]
    present = tags > 0
    multi = present.sum(1) > 1
    if bool(multi.any()):
        inside = torch.zeros(b, h, w, dtype=torch.bool, device=cams.device)
        for i, (cy0, cx0, cy1, cx1) in enumerate(cell_boxes):
            inside[i, cy0:cy1, cx0:cx1] = True
        a = a.clone()
        a[multi] = a[multi] * transport(a[multi], inside[multi], present[multi], asdict(cfg.ot))
    return a, cell_boxes


def upsample_box(a: torch.Tensor, cell_box: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """(K, h, w) CAM cells of ``cell_box`` → (K, crop h, crop w) with PyTorch legacy nearest."""
    cy0, cx0, cy1, cx1 = cell_box
    y0, x0, y1, x1 = box
    rows = cy0 + legacy_nearest_index(cy1 - cy0, y1 - y0).to(a.device)
    cols = cx0 + legacy_nearest_index(cx1 - cx0, x1 - x0).to(a.device)
    return a[:, rows][:, :, cols]


def step1(masks: torch.Tensor, cams: torch.Tensor, tags: torch.Tensor, rgb: torch.Tensor | None, boxes: torch.Tensor,
          cfg: RelabelConfig, fg_ids: torch.Tensor, crf: CRFRunner) -> torch.Tensor:
    """Paste OT-restored foreground seeds into ``masks`` (B, S, S); background/uncertain keeps the label."""
    a, cell_boxes = step1_cams(cams, tags, boxes, masks.shape[-1], cfg)
    out = masks.clone()
    jobs, where = [], []
    box_list = [tuple(int(v) for v in box) for box in boxes.tolist()]
    for i, box in enumerate(box_list):
        fg = torch.nonzero(tags[i] > 0).flatten()
        if len(fg) == 0:
            continue
        maps = upsample_box(a[i, fg], cell_boxes[i], box)
        if cfg.step1.bg_mode == "power":
            bg = (1 - maps.amax(0, keepdim=True)).clamp_min(0) ** cfg.step1.bg_gamma
            maps = torch.cat([bg, maps])
        elif cfg.step1.bg_mode == "constant":
            maps = torch.cat([torch.full_like(maps[:1], float(cfg.step1.bg_value)), maps])
        jobs.append(maps)
        where.append((i, fg))
    if not jobs:
        return out
    rows = [i for i, _ in where]
    q_list = crf(crops(rgb, rows, [box_list[i] for i in rows]), jobs)
    for (i, fg), q in zip(where, q_list, strict=True):
        y0, x0, y1, x1 = box_list[i]
        ignore = torch.tensor([IGNORE], device=q.device)
        ids = fg_ids.to(q.device)[fg.to(q.device)]
        if cfg.step1.bg_mode == "official":
            q = torch.cat([q, 1 - q.amax(0, keepdim=True)])
            lut = torch.cat([ids, ignore])
        else:
            lut = torch.cat([ignore, ids])
        new = lut[argmax(q, 0)].to(out.device)
        region = out[i, y0:y1, x0:x1]
        paste = new != IGNORE
        if cfg.step1.paste == "missing":
            paste &= ~torch.isin(new, torch.unique(region))
        region[paste] = new[paste]
    return out


# -- Steps 2 and 3 -------------------------------------------------------------------------------
def resize_to_grid(feat: torch.Tensor, g: int) -> torch.Tensor:
    """C4/C5 onto the working grid: bilinear, align_corners=True (the release's resize)."""
    feat = feat.float().contiguous(memory_format=torch.channels_last)  # no copy when the net runs channels-last
    if tuple(feat.shape[-2:]) == (g, g):
        return feat
    return F.interpolate(feat, size=(g, g), mode="bilinear", align_corners=True)


def wss_heatmap(feats: Sequence[torch.Tensor], labels: torch.Tensor, valid: torch.Tensor, num_classes: int,
                mm_eps: float) -> torch.Tensor:
    """H^ws (B, C, g, g) of Step 3: per layer, min-max cosine maps of the WSS features (resized to the working
    grid) against their class prototypes; their mean, min-maxed again."""
    g = labels.shape[-1]
    maps = []
    for feat in feats:
        grid = resize_to_grid(feat, g)
        protos, present = prototypes(grid, labels, valid, num_classes)
        maps.append(minmax(cosine_heatmaps(grid, protos, present), valid, mm_eps))
    return minmax(torch.stack(maps).mean(0), valid, mm_eps)


def step23_maps(masks: torch.Tensor, uss: torch.Tensor, wss_feats: Sequence[torch.Tensor], valid: torch.Tensor,
                num_classes: int, cfg: RelabelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """H^dhr (B, C, g, g) after Steps 2-3 (minus the CRF) and the class sets (B, C)."""
    g = uss.shape[-1]
    labels = majority_vote(masks, g, cfg.uss_patch, num_classes)
    protos, present = prototypes(uss.float(), labels, valid, num_classes)
    heat = minmax(cosine_heatmaps(uss, protos, present), valid, cfg.mm_eps) * present[:, :, None, None]
    if 3 in cfg.steps and wss_feats:
        vn = F.normalize(protos, dim=2)
        corr = F.relu(torch.einsum("bcd,bkd->bck", vn, vn)).triu()
        groups = (corr > cfg.tau) & present[:, None, :] & present[:, :, None]
        if bool((groups.sum(2) > 1).any()):
            ws_heat = wss_heatmap(wss_feats, labels, valid, num_classes, cfg.mm_eps)
            for i in range(num_classes):  # sequential, in place: overlapping groups multiply twice
                group = groups[:, i]
                todo = group.sum(1) > 1
                if bool(todo.any()):
                    plan = transport(ws_heat[todo], valid[todo], group[todo], asdict(cfg.ot))
                    heat[todo] = torch.where(group[todo][:, :, None, None], heat[todo] * plan, heat[todo])
    if cfg.global_ot:
        multi = present.sum(1) > 1
        if bool(multi.any()):
            plan = transport(heat[multi], valid[multi], present[multi], asdict(cfg.ot))
            heat[multi] = minmax(heat[multi] * plan, valid[multi], cfg.mm_eps) * present[multi][:, :, None, None]
    return heat, present


def sample_at_pixels(heat: torch.Tensor, valid: torch.Tensor, canvas: int) -> torch.Tensor:
    """(B, C, S, S) maps at canvas pixel centres, grid coordinate (x + 0.5) g / S - 0.5, clamped to the valid cells."""
    b, _, g, _ = heat.shape
    pos = (torch.arange(canvas, device=heat.device, dtype=torch.float32) + 0.5) * g / canvas - 0.5
    idx = torch.arange(g, device=heat.device, dtype=torch.float32)
    any_row, any_col = valid.any(2), valid.any(1)  # (B, g) rows / columns with a valid cell

    def clamp(flags: torch.Tensor) -> torch.Tensor:
        lo = torch.where(flags, idx, float(g)).amin(1, keepdim=True)
        hi = torch.where(flags, idx, -1.0).amax(1, keepdim=True)
        return pos[None].clamp(min=0).minimum(hi).maximum(lo)

    gy, gx = clamp(any_row), clamp(any_col)  # (B, S) grid coordinates
    ny, nx = (gy + 0.5) / g * 2 - 1, (gx + 0.5) / g * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(nx[:, None, :], ny[:, :, None]), dim=-1)
    return F.grid_sample(heat, grid, mode="bilinear", padding_mode="border", align_corners=False)


def step23(masks: torch.Tensor, uss: torch.Tensor, wss_feats: Sequence[torch.Tensor], rgb: torch.Tensor | None,
           boxes: torch.Tensor, num_classes: int, cfg: RelabelConfig, crf: CRFRunner) -> torch.Tensor:
    """Overwrite each crop with argmax CRF(image, H^dhr at its pixels) over its class set."""
    canvas, g = masks.shape[-1], uss.shape[-1]
    valid = valid_cells(boxes, canvas, g, cfg.cell_scope)
    heat, present = step23_maps(masks, uss, wss_feats, valid, num_classes, cfg)
    out = masks.clone()
    box_list = [tuple(int(v) for v in box) for box in boxes.tolist()]
    todo = [i for i in range(len(box_list)) if bool(present[i].any())]
    if not todo:
        return out
    # sample only each crop's own classes: pad the class lists to the longest one
    classes = [torch.nonzero(present[i]).flatten() for i in todo]
    width = max(len(c) for c in classes)
    index = torch.stack([F.pad(c, (0, width - len(c))) for c in classes])
    chosen = heat[todo].gather(1, index[:, :, None, None].expand(-1, -1, g, g))
    pixels = sample_at_pixels(chosen, valid[todo], canvas)
    jobs = [pixels[k, : len(cls), y0:y1, x0:x1]
            for k, (i, cls) in enumerate(zip(todo, classes, strict=True)) for (y0, x0, y1, x1) in [box_list[i]]]
    q_list = crf(crops(rgb, todo, [box_list[i] for i in todo]), jobs)
    for i, cls, q in zip(todo, classes, q_list, strict=True):
        y0, x0, y1, x1 = box_list[i]
        out[i, y0:y1, x0:x1] = cls.to(q.device)[argmax(q, 0)].to(out.device)
    return out


@dataclass
class RelabelResult:
    masks: torch.Tensor
    changed: dict[str, torch.Tensor]  # pixels changed by each step, per sample


@torch.no_grad()
def relabel(masks: torch.Tensor, *, cams: torch.Tensor, tags: torch.Tensor, images: torch.Tensor, boxes: torch.Tensor,
            uss: torch.Tensor | None, wss_feats: Sequence[torch.Tensor], num_classes: int, background_id: int | None,
            cfg: RelabelConfig, crf: CRFRunner) -> RelabelResult:
    """The whole §5.5 pseudo-code for a batch; returns the rebuilt masks and per-step change counts.

    Always fp32: autocast is switched off inside (Lightning's ``16-mixed`` wraps ``training_step``)
    and half-precision inputs (CAMs, C4/C5 of an autocast forward) are promoted first, so the
    masks do not depend on the trainer's precision.
    """
    with torch.autocast(device_type=masks.device.type, enabled=False):
        return _relabel_fp32(masks, cams=cams.float(), tags=tags.float(), images=images.float(), boxes=boxes,
                             uss=None if uss is None else uss.float(), wss_feats=[f.float() for f in wss_feats],
                             num_classes=num_classes, background_id=background_id, cfg=cfg, crf=crf)


def _relabel_fp32(masks: torch.Tensor, *, cams: torch.Tensor, tags: torch.Tensor, images: torch.Tensor,
                  boxes: torch.Tensor, uss: torch.Tensor | None, wss_feats: Sequence[torch.Tensor], num_classes: int,
                  background_id: int | None, cfg: RelabelConfig, crf: CRFRunner) -> RelabelResult:
    fg_ids = torch.tensor([c for c in range(num_classes) if c != background_id], dtype=torch.long)
    changed: dict[str, torch.Tensor] = {}
    current = masks
    rgb = crf_images(images, crf) if set(cfg.steps) & {1, 2} else None
    if 1 in cfg.steps:
        new = step1(current, cams, tags, rgb, boxes, cfg, fg_ids, crf)
        changed["step1"] = (new != current).flatten(1).sum(1)
        current = new
    if 2 in cfg.steps:
        if uss is None:
            raise DHRError("model.dhr.steps includes 2 but the batch has no USS features; export them with dhr.features")
        new = step23(current, uss, wss_feats, rgb, boxes, num_classes, cfg, crf)
        changed["step23"] = (new != current).flatten(1).sum(1)
        current = new
    return RelabelResult(current, changed)
