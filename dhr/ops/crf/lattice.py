"""The permutohedral lattice (Adams, Baek and Davis 2010) in PyTorch: pydensecrf's Gaussian filter,
batched over images and on any device.

Written from pydensecrf's ``permutohedral.cpp`` in the SSE build that x86 compilers produce (it is
the one pip builds here), so the float32 arithmetic follows the same steps: elevation onto the
hyperplane with scale sqrt(2/3)(d+1)/sqrt((i+1)(i+2)), the remainder-0 point rounded half to even,
the simplex rank with densecrf's tie rule, barycentric weights, splat, a [1/2 1 1/2] blur along each
of the d+1 lattice axes, slice times 1/(1 + 2^-d).

pydensecrf keeps the lattice vertices in a hash table. Here a vertex is its d integer coordinates
(and its image's index) packed into one collision-free int64 code: ``torch.unique`` gives vertex ids,
and a vertex's blur neighbours are found by code arithmetic and a sorted search; a neighbour that is
not in the lattice reads a zero row, as in pydensecrf.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from dhr.errors import DHRError

MAX_CODE = 2**62  # packed vertex codes stay below this (int64, with room for the neighbour offsets)
SPARSE_DEVICES = ("cpu", "cuda")  # devices with CSR sparse x dense matmul


def _scale_factors(d: int) -> list[float]:
    """The diagonal of E, rounded to float32 the way the C++ does (double arithmetic, float storage)."""
    inv_std_dev = float(np.float32(np.sqrt(2.0 / 3.0) * (d + 1)))
    return [float(np.float32(1.0 / np.sqrt((i + 2) * (i + 1)) * inv_std_dev)) for i in range(d)]


def _canonical(d: int, device: torch.device) -> torch.Tensor:
    """(d+1, d+1): the canonical simplex, remainder r, rank k -> r, or r - (d+1) past d - r."""
    r = torch.arange(d + 1, device=device)[:, None]
    k = torch.arange(d + 1, device=device)[None, :]
    return torch.where(k <= d - r, r, r - (d + 1))


@dataclass
class Lattice:
    """A built lattice: which vertices each point splats to, with which weights, and the blur neighbours.

    Splat and slice are sparse matrices (CSR) where the device has sparse matmul (CPU, CUDA): the
    same sums as pydensecrf's loops, several times faster than scatter and gather; elsewhere they
    run as ``index_add_`` and gathers.
    """

    batch: int                # images the lattice holds (vertices of different images never meet)
    points: int               # points (pixels) per image
    dim: int                  # feature dimension d
    offsets: torch.Tensor     # (d+1, batch*points) int64: vertex id of each simplex corner of each point
    weights: torch.Tensor     # (d+1, batch*points) float32 barycentric weights (splat)
    slice_weights: torch.Tensor  # weights * alpha, alpha = 1/(1 + 2^-d), rounded to float32 as pydensecrf's SSE path
    neighbours: torch.Tensor  # (d+1, 2, vertices) int64; ``vertices`` indexes the zero row
    vertices: int
    splat: torch.Tensor | None = None   # CSR (vertices, batch*points)
    slice: torch.Tensor | None = None   # CSR (batch*points, vertices)

    @classmethod
    def build(cls, features: torch.Tensor) -> Lattice:
        """Lattice of (B, N, d) float32 features (one lattice per image, built together)."""
        if features.dim() != 3 or features.dtype != torch.float32:
            raise ValueError(f"features must be (B, N, d) float32, got {tuple(features.shape)} {features.dtype}")
        b, n, d = features.shape
        device = features.device
        f = features.reshape(b * n, d)
        scale = torch.tensor(_scale_factors(d), dtype=torch.float32, device=device)
        inv = torch.tensor(1.0 / (d + 1), dtype=torch.float32, device=device)  # 1.0f / (d+1)

        # elevate: y = E f, accumulated from the last coordinate down, in float32
        elevated = [torch.empty(0)] * (d + 1)
        sm = torch.zeros(b * n, dtype=torch.float32, device=device)
        for j in range(d, 0, -1):
            cf = f[:, j - 1] * scale[j - 1]
            elevated[j] = sm - j * cf
            sm = sm + cf
        elevated[0] = sm
        elev = torch.stack(elevated, dim=1)  # (P, d+1)

        # the closest remainder-0 point: round half to even (SSE4.1 / MXCSR nearest)
        v = torch.round(elev * inv)
        rem0 = v * (d + 1)
        total = v.sum(1, keepdim=True)

        # rank of each coordinate of the remainder; ties go to the later coordinate (densecrf's rule)
        delta = elev - rem0
        rank = torch.zeros_like(elev)
        for i in range(d):
            for j in range(i + 1, d + 1):
                c = (delta[:, i] < delta[:, j]).float()
                rank[:, i] += c
                rank[:, j] += 1 - c
        rank = rank + total
        shift = (rank < 0).float() * (d + 1) - (rank >= d + 1).float() * (d + 1)
        rank = rank + shift
        rem0 = rem0 + shift

        # barycentric coordinates, accumulated in the C++ order
        bary = torch.zeros(b * n, d + 2, dtype=torch.float32, device=device)
        v = (elev - rem0) * inv
        pos = d - rank.long()
        for i in range(d + 1):
            bary.scatter_add_(1, pos[:, i:i + 1], v[:, i:i + 1])
            bary.scatter_add_(1, pos[:, i:i + 1] + 1, -v[:, i:i + 1])
        bary[:, 0] = bary[:, 0] + (1 + bary[:, d + 1])
        weights = bary[:, : d + 1].T.contiguous()  # (d+1, P)
        slice_weights = weights * float(np.float32(1.0 / (1 + 2.0 ** -d)))

        # the d+1 vertices of each point's simplex: d integer coordinates each
        canonical = _canonical(d, device)
        rem = rem0[:, :d].long()
        rk = rank[:, :d].long()
        keys = rem[None] + canonical[:, rk]  # (d+1, P, d)
        offsets, neighbours, vertices = _index_vertices(keys, b, n, d)
        lattice = cls(batch=b, points=n, dim=d, offsets=offsets, weights=weights, slice_weights=slice_weights,
                      neighbours=neighbours, vertices=vertices)
        if device.type in SPARSE_DEVICES:
            lattice.splat, lattice.slice = _sparse_matrices(offsets, weights, slice_weights, vertices)
        return lattice


    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Gaussian-filter (B, N, C) float32 values: splat, blur along every axis, slice."""
        b, n, c = values.shape
        if (b, n) != (self.batch, self.points):
            raise ValueError(f"values are {(b, n)} but the lattice holds {(self.batch, self.points)}")
        flat = values.reshape(b * n, c)
        if self.splat is not None:
            grid = self.splat @ flat
        else:
            grid = flat.new_zeros(self.vertices, c)
            for r in range(self.dim + 1):
                grid.index_add_(0, self.offsets[r], flat * self.weights[r, :, None])
        grid = self._blur(grid)
        if self.slice is not None:
            return (self.slice @ grid).view(b, n, c)
        out = self.slice_weights[0, :, None] * grid[self.offsets[0]]
        for r in range(1, self.dim + 1):
            out += self.slice_weights[r, :, None] * grid[self.offsets[r]]
        return out.view(b, n, c)

    def _blur(self, grid: torch.Tensor) -> torch.Tensor:
        """v + 0.5 (v[n1] + v[n2]) along each axis in turn; a missing neighbour reads the zero last row."""
        x = torch.cat([grid, grid.new_zeros(1, grid.shape[1])])
        y = torch.zeros_like(x)
        for n1, n2 in self.neighbours:
            inner = y[:-1]
            torch.index_select(x, 0, n1, out=inner)
            inner += x.index_select(0, n2)
            inner *= 0.5
            inner += x[:-1]
            x, y = y, x
        return x[:-1]


def _sparse_matrices(offsets: torch.Tensor, weights: torch.Tensor, slice_weights: torch.Tensor,
                     vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Splat (vertices x points) and slice (points x vertices) as CSR matrices, columns sorted per row."""
    corners, points = offsets.shape
    device = offsets.device
    by_point, order = offsets.T.sort(dim=1)  # (P, d+1): each point's vertices in order
    slice_values = slice_weights.T.gather(1, order).flatten()
    point_rows = torch.arange(0, points * corners + 1, corners, device=device)
    flat_vertex = by_point.flatten()
    by_vertex = torch.sort(flat_vertex, stable=True).indices  # stable: points ascend within a vertex
    counts = torch.bincount(flat_vertex, minlength=vertices)
    vertex_rows = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    splat_values = weights.T.gather(1, order).flatten()[by_vertex]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        splat = torch.sparse_csr_tensor(vertex_rows, by_vertex // corners, splat_values, (vertices, points),
                                        check_invariants=False)
        sliced = torch.sparse_csr_tensor(point_rows, flat_vertex, slice_values, (points, vertices),
                                         check_invariants=False)
    return splat, sliced


def _index_vertices(keys: torch.Tensor, b: int, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Vertex ids of (d+1, P, d) integer keys and the blur neighbours of every vertex along each axis."""
    device = keys.device
    low = keys.amin(dim=(0, 1)) - d  # room for the neighbours' +-d
    span = (keys.amax(dim=(0, 1)) + d - low + 1).tolist()
    strides, step = [0] * d, 1
    for i in range(d - 1, -1, -1):
        strides[i], step = step, step * span[i]
    if step * b >= MAX_CODE:
        raise DHRError(f"the permutohedral lattice of these features spans {span} per axis over {b} images, too "
                       "wide for 64-bit vertex codes: raise the CRF kernel widths (crf.bilateral_sxy, "
                       "crf.bilateral_srgb), run fewer crops per call (crf.chunk) or use crf.backend=pydensecrf")
    stride = torch.tensor(strides, dtype=torch.long, device=device)
    image = torch.arange(b, device=device).repeat_interleave(n) * step  # (P,)
    codes = ((keys - low) * stride).sum(-1) + image  # (d+1, P)
    unique, inverse = torch.unique(codes.flatten(), sorted=True, return_inverse=True)
    m = len(unique)
    total = int(stride.sum())
    neighbours = torch.empty(d + 1, 2, m, dtype=torch.long, device=device)
    for axis in range(d + 1):
        # neighbour 1: every coordinate - 1, this axis + d (the last axis is implied: all - 1)
        move = -total + ((d + 1) * strides[axis] if axis < d else 0)
        for side, code in enumerate((unique + move, unique - move)):
            at = torch.searchsorted(unique, code).clamp_(max=m - 1)
            neighbours[axis, side] = torch.where(unique[at] == code, at, m)
    return inverse.view(d + 1, b * n), neighbours, m
