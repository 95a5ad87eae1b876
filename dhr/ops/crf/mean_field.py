"""The torch backend: pydensecrf's dense CRF (``dhr-method.md`` §7) batched over crops of one size,
on whatever device the crops are on.

The same energy as pydensecrf's ``DenseCRF2D`` with two Potts terms: unary U = -log(clip(p, clip, 1));
a Gaussian kernel on [x/sxy, y/sxy] and a bilateral one on [x/sxy, y/sxy, r/srgb, g/srgb, b/srgb]
(x is the column index, channels in the order the caller passes), each normalised symmetrically
(n = 1/sqrt(K 1 + 1e-20), message n K(n Q)) with the self term kept; Q = softmax(-U) and then
``iterations`` times Q = softmax(-U + w_g msg_g + w_b msg_b). The Gaussian lattice depends only on the
crop size, so it is built once per size and shared by every crop and call.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from dhr.ops.crf.lattice import Lattice
from dhr.ops.crf.params import CRFParams

ABSENT = 1e30  # the unary of a padding label: its Q is exactly 0, so it sends and receives nothing


def _divide(values: torch.Tensor, by: float) -> torch.Tensor:
    """values / by in IEEE float32 (a scalar divisor may become a reciprocal multiply on CUDA)."""
    return values / torch.full((1,), by, dtype=torch.float32, device=values.device)


def position_features(h: int, w: int, sxy: float, device: torch.device) -> torch.Tensor:
    """(H*W, 2) float32 [x/sxy, y/sxy], row-major pixels."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    return _divide(torch.stack([xs.flatten(), ys.flatten()], dim=1), sxy)


def bilateral_features(images: torch.Tensor, sxy: float, srgb: float) -> torch.Tensor:
    """(B, H*W, 5) float32 [x/sxy, y/sxy, c0/srgb, c1/srgb, c2/srgb] of (B, H, W, 3) uint8 images."""
    b, h, w, _ = images.shape
    xy = position_features(h, w, sxy, images.device).expand(b, -1, -1)
    rgb = _divide(images.reshape(b, h * w, 3).float(), srgb)
    return torch.cat([xy, rgb], dim=2)


def normaliser(lattice: Lattice) -> torch.Tensor:
    """(B, N, 1) symmetric normalisation 1/sqrt(K 1 + 1e-20), in double as pydensecrf computes it."""
    ones = torch.ones(lattice.batch, lattice.points, 1, dtype=torch.float32, device=lattice.offsets.device)
    return (lattice.filter(ones).double() + 1e-20).rsqrt().float()


@lru_cache(maxsize=8)
def gaussian_kernel(h: int, w: int, sxy: float, device: torch.device) -> tuple[Lattice, torch.Tensor]:
    """The Gaussian (position-only) lattice of an H x W crop and its normaliser, built once per size."""
    lattice = Lattice.build(position_features(h, w, sxy, device)[None])
    return lattice, normaliser(lattice)[0]  # (N, 1)


def mean_field(images: torch.Tensor, probs: torch.Tensor, params: CRFParams,
               labels: torch.Tensor | None = None) -> torch.Tensor:
    """Posterior Q (B, C, H, W) float32 of (B, H, W, 3) uint8 images and (B, C, H, W) probabilities.

    ``labels`` (B,) counts the real labels of each crop when crops with fewer labels were padded up
    to C: the padding labels get Q = 0 and do not touch the others.
    """
    b, c, h, w = probs.shape
    if images.shape != (b, h, w, 3) or images.dtype != torch.uint8:
        raise ValueError(f"CRF images must be (B, H, W, 3) uint8 matching probabilities {tuple(probs.shape)}, "
                         f"got {tuple(images.shape)} {images.dtype}")
    images = images.to(probs.device)
    unary = -torch.log(probs.float().clamp(params.clip, 1.0)).flatten(2).transpose(1, 2)  # (B, N, C)
    if labels is not None:
        padding = torch.arange(c, device=probs.device)[None, :] >= labels.to(probs.device)[:, None]  # (B, C)
        unary = unary.masked_fill(padding[:, None, :], ABSENT)
    gauss, gauss_norm = gaussian_kernel(h, w, float(params.gauss_sxy), probs.device)
    bilateral = Lattice.build(bilateral_features(images, float(params.bilateral_sxy), float(params.bilateral_srgb)))
    bilateral_norm = normaliser(bilateral)
    n = h * w

    def gaussian_message(q: torch.Tensor) -> torch.Tensor:  # one lattice for the whole batch: (1, N, B*C)
        folded = (gauss_norm * q).transpose(0, 1).reshape(1, n, b * c)
        return gauss_norm * gauss.filter(folded).view(n, b, c).transpose(0, 1)

    q = torch.softmax(-unary, dim=2)
    for _ in range(params.iterations):
        energy = -unary + params.gauss_compat * gaussian_message(q)
        energy = energy + params.bilateral_compat * (bilateral_norm * bilateral.filter(bilateral_norm * q))
        q = torch.softmax(energy, dim=2)
    return q.transpose(1, 2).reshape(b, c, h, w)
