"""A literal, slow reference of DHR's relabelling written from ``dhr-method.md`` §5-7.

One sample at a time, per-cell Python loops, numpy float64, OpenCV for the vote resize,
PyTorch's own ``F.interpolate`` for the two library resizes, and pydensecrf called directly
with the release's de-normalisation (float64, truncation) written out here. It imports nothing
from the rest of ``dhr``, so it cannot inherit a defect of the code it checks. Used by the
tests of :mod:`dhr.ops.relabel` and as the baseline of ``scripts/bench/relabel.py``; ``cfg`` and
``crf_params`` are read by attribute only (any object with the spec's fields).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IGNORE = 255
RELEASE_MEAN = [0.485, 0.456, 0.406]  # Python lists, as the release keeps them
RELEASE_STD = [0.229, 0.224, 0.225]


def release_denormalize(image_chw: np.ndarray) -> np.ndarray:
    """§5.1: (x * std + mean) * 255 on the float32 array with list mean/std (numpy: float64), truncated."""
    x = np.asarray(image_chw, dtype=np.float32).transpose(1, 2, 0)
    x = (x * RELEASE_STD + RELEASE_MEAN) * 255  # float32 array times a list: float64 arithmetic
    return np.ascontiguousarray(np.clip(x, 0, 255).astype(np.uint8))  # astype truncates toward zero


def release_crf(image: np.ndarray, probs: np.ndarray, p) -> np.ndarray:
    """§7 with pydensecrf: unary -log(clip(P)), Gaussian and bilateral Potts terms, mean field."""
    import pydensecrf.densecrf as dcrf

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, p.clip, 1.0)).reshape(c, -1).astype(np.float32)))
    crf.addPairwiseGaussian(sxy=p.gauss_sxy, compat=p.gauss_compat)
    crf.addPairwiseBilateral(sxy=p.bilateral_sxy, srgb=p.bilateral_srgb, rgbim=image, compat=p.bilateral_compat)
    return np.asarray(crf.inference(p.iterations), dtype=np.float32).reshape(c, h, w)


def ceil_to(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)


def ot_plan(s: np.ndarray, eps: float = 0.1, max_iter: int = 100, tol: float = 1e-2) -> np.ndarray:
    """§6 for one (cells x classes) matrix: normalised plan."""
    m, n = s.shape
    k = np.exp(-(1.0 - s) / eps)
    a, b = np.full(m, 1.0 / m), np.full(n, 1.0 / n)
    r, c = np.ones(m), np.ones(n)
    for _ in range(max_iter):
        r_prev = r
        r = a / (k @ c)
        c = b / (k.T @ r)
        if np.mean(np.abs(r - r_prev)) < tol:
            break
    t = r[:, None] * k * c[None, :]
    lo, hi = t.min(0), t.max(0)
    return (t - lo) / np.maximum(hi - lo, 1e-5)


def mm(x: np.ndarray, eps: float) -> np.ndarray:
    """Min-max of a vector of valid-cell values."""
    return np.clip((x - x.min()) / max(x.max() - x.min(), eps), 0, 1)


def vote(mask: np.ndarray, g: int, patch: int) -> np.ndarray:
    s = mask.shape[0]
    p = ceil_to(s, patch)
    big = cv2.resize(mask.astype(np.uint8), (p, p), interpolation=cv2.INTER_NEAREST)
    out = np.full((g, g), IGNORE, dtype=np.int64)
    for r in range(g):
        for c in range(g):
            y, x = int(r * p / g), int(c * p / g)
            values, counts = np.unique(big[y : y + p // g, x : x + p // g], return_counts=True)
            out[r, c] = values[np.argmax(counts)]
    return out


def cell_is_valid(box, s: int, g: int, scope: str) -> np.ndarray:
    y0, x0, y1, x1 = box
    valid = np.zeros((g, g), dtype=bool)
    for r in range(g):
        for c in range(g):
            cy, cx = (r + 0.5) * s / g, (c + 0.5) * s / g
            valid[r, c] = scope == "all" or (y0 <= cy < y1 and x0 <= cx < x1)
    return valid


def protos_of(feat: np.ndarray, labels: np.ndarray, valid: np.ndarray, classes: list[int]) -> dict[int, np.ndarray]:
    sums = {c: np.zeros(feat.shape[0]) for c in classes}
    counts = dict.fromkeys(classes, 0)
    g = labels.shape[0]
    for r in range(g):
        for c in range(g):
            if valid[r, c] and labels[r, c] != IGNORE:
                sums[labels[r, c]] += feat[:, r, c]
                counts[labels[r, c]] += 1
    return {c: sums[c] / counts[c] for c in classes}


def heat_of(feat: np.ndarray, protos: dict[int, np.ndarray], classes: list[int], valid: np.ndarray, eps: float) -> np.ndarray:
    """(N, g, g) min-max cosine heat-maps, zero outside the valid cells."""
    g = feat.shape[-1]
    out = np.zeros((len(classes), g, g))
    cells = [(r, c) for r in range(g) for c in range(g) if valid[r, c]]
    for k, cls in enumerate(classes):
        v = protos[cls] / max(np.linalg.norm(protos[cls]), 1e-12)
        vals = np.array([feat[:, r, c] @ v / max(np.linalg.norm(feat[:, r, c]), 1e-12) for r, c in cells])
        for (r, c), val in zip(cells, mm(vals, eps), strict=True):
            out[k, r, c] = val
    return out


def ot_on_cells(maps: np.ndarray, valid: np.ndarray, cfg) -> np.ndarray:
    """Plan (N, g, g) of OT over the valid cells of (N, g, g) maps."""
    cells = np.argwhere(valid)
    s = np.stack([maps[:, r, c] for r, c in cells])
    plan = ot_plan(s, cfg.ot.eps, cfg.ot.max_iter, cfg.ot.tol)
    out = np.zeros_like(maps)
    for (r, c), row in zip(cells, plan, strict=True):
        out[:, r, c] = row
    return out


def mm_maps(maps: np.ndarray, valid: np.ndarray, eps: float) -> np.ndarray:
    out = np.zeros_like(maps)
    for k in range(len(maps)):
        out[k][valid] = mm(maps[k][valid], eps)
    return out


def bilinear_at_pixels(maps: np.ndarray, valid: np.ndarray, box, s: int) -> np.ndarray:
    """Maps sampled at the crop's pixel centres, clamped to the valid rectangle (§5.4 item 4)."""
    g = maps.shape[-1]
    rows, cols = np.nonzero(valid.any(1))[0], np.nonzero(valid.any(0))[0]
    y0, x0, y1, x1 = box
    gy = np.clip((np.arange(y0, y1) + 0.5) * g / s - 0.5, rows.min(), rows.max())
    gx = np.clip((np.arange(x0, x1) + 0.5) * g / s - 0.5, cols.min(), cols.max())
    fy, fx = np.floor(gy).astype(int), np.floor(gx).astype(int)
    wy, wx = gy - fy, gx - fx
    fy1, fx1 = np.minimum(fy + 1, g - 1), np.minimum(fx + 1, g - 1)
    out = np.empty((len(maps), len(gy), len(gx)))
    for k, m in enumerate(maps):
        top = m[fy][:, fx] * (1 - wx) + m[fy][:, fx1] * wx
        bottom = m[fy1][:, fx] * (1 - wx) + m[fy1][:, fx1] * wx
        out[k] = top * (1 - wy[:, None]) + bottom * wy[:, None]
    return out


def reference_relabel(mask, cam, tag, image, box, uss, wss, num_classes, background_id, cfg, crf_params, crf=None):
    """One sample: (S, S) int mask, (C_fg, h, w) CAM, (C_fg,) tags, (3, S, S) image, box, (D, g, g) USS, [C4, C5].

    ``crf(image_uint8, probs)`` replaces the CRF (benchmarks time the rest without it).
    """
    if crf is None:
        def crf(im, p):
            return release_crf(im, p, crf_params)
    s = mask.shape[0]
    mask = mask.copy()
    y0, x0, y1, x1 = box
    fg_ids = [c for c in range(num_classes) if c != background_id]
    crop_image = release_denormalize(image[:, y0:y1, x0:x1])
    if 1 in cfg.steps:
        a = np.maximum(cam.astype(np.float64), 0)
        a = a / np.maximum(a.max(axis=(1, 2), keepdims=True), cfg.cam_eps) * tag[:, None, None]
        present = [k for k in range(len(tag)) if tag[k] > 0]
        if present:
            h, w = cam.shape[1:]
            cy0, cx0 = y0 * h // s, x0 * w // s
            cy1, cx1 = min(max(y1 * h // s, cy0 + 1), h), min(max(x1 * w // s, cx0 + 1), w)
            af = a[present][:, cy0:cy1, cx0:cx1]
            if len(present) > 1:
                plan = ot_plan(af.reshape(len(present), -1).T, cfg.ot.eps, cfg.ot.max_iter, cfg.ot.tol)
                af = af * plan.T.reshape(af.shape)
            up = F.interpolate(torch.tensor(af, dtype=torch.float32)[None], size=(y1 - y0, x1 - x0), mode="nearest")[0].numpy()
            if cfg.step1.bg_mode == "official":
                q = crf(crop_image, up)
                q = np.concatenate([q, 1 - q.max(0, keepdims=True)])
                lut = [fg_ids[k] for k in present] + [IGNORE]
            else:
                bg = np.clip(1 - up.max(0, keepdims=True), 0, None) ** cfg.step1.bg_gamma if cfg.step1.bg_mode == "power" \
                    else np.full_like(up[:1], cfg.step1.bg_value)
                q = crf(crop_image, np.concatenate([bg, up]).astype(np.float32))
                lut = [IGNORE] + [fg_ids[k] for k in present]
            new = np.asarray(lut)[q.argmax(0)]
            region = mask[y0:y1, x0:x1]
            before = set(np.unique(region).tolist())
            for yy in range(y1 - y0):
                for xx in range(x1 - x0):
                    if new[yy, xx] != IGNORE and (cfg.step1.paste == "all" or new[yy, xx] not in before):
                        region[yy, xx] = new[yy, xx]
    if 2 not in cfg.steps:
        return mask
    g = uss.shape[-1]
    labels = vote(mask, g, cfg.uss_patch)
    valid = cell_is_valid(box, s, g, cfg.cell_scope)
    classes = sorted({int(v) for v in labels[valid] if v != IGNORE})
    if not classes:
        return mask
    v = protos_of(uss.astype(np.float64), labels, valid, classes)
    heat = heat_of(uss.astype(np.float64), v, classes, valid, cfg.mm_eps)
    n = len(classes)
    vn = np.stack([v[c] / np.linalg.norm(v[c]) for c in classes])
    r = np.maximum(vn @ vn.T, 0)
    r = np.triu(r)
    if 3 in cfg.steps and wss and any((row > cfg.tau).sum() >= 2 for row in r):
        per_layer = []
        for feat in wss:
            grid = F.interpolate(torch.tensor(feat, dtype=torch.float32)[None], size=(g, g), mode="bilinear",
                                 align_corners=True)[0].numpy().astype(np.float64)
            per_layer.append(heat_of(grid, protos_of(grid, labels, valid, classes), classes, valid, cfg.mm_eps))
        ws_heat = mm_maps(np.mean(per_layer, axis=0), valid, cfg.mm_eps)
        for i in range(n):
            group = [j for j in range(n) if r[i, j] > cfg.tau]
            if len(group) > 1:
                heat[group] = heat[group] * ot_on_cells(ws_heat[group], valid, cfg)
    if cfg.global_ot and n > 1:
        heat = mm_maps(heat * ot_on_cells(heat, valid, cfg), valid, cfg.mm_eps)
    pixels = bilinear_at_pixels(heat, valid, box, s)
    q = crf(crop_image, pixels.astype(np.float32))
    mask[y0:y1, x0:x1] = np.asarray(classes)[q.argmax(0)]
    return mask
