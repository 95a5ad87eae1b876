"""CAUSE concept-wise contrastive loss and per-concept memory bank (``cause-method.md`` §6.3-6.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair_losses(s: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """l_ij = -s_ij + log sum_{k in P_i u N_i} exp(s_ik) for every positive pair (i, j): (num pairs,)."""
    considered = pos | neg
    masked = s.masked_fill(~considered, float("-inf"))
    row_max = masked.amax(dim=1, keepdim=True).clamp_min(-1e4).detach()
    lse = torch.log(torch.exp(masked - row_max).sum(dim=1, keepdim=True).clamp_min(1e-30)) + row_max
    return (lse - s)[pos]


def concept_contrastive_loss(
    z_student: torch.Tensor,
    z_teacher: torch.Tensor,
    concepts: torch.Tensor,
    codebook: torch.Tensor,
    *,
    bank: ConceptBank | None = None,
    tau: float = 0.07,
    pos_thresh: float = 0.3,
    neg_thresh: float = 0.1,
) -> torch.Tensor:
    """L_front for one batch of grid-sampled vectors.

    ``z_student``/``z_teacher``: (B, P, Dz); ``concepts``: (B, P) concept index of each patch.
    Per image b, anchors are its P student vectors, candidates every teacher vector of the batch
    (minus the anchor's own teacher copy) and, separately, every bank entry. Pairs with
    concept similarity between the thresholds are ignored; terms without a positive pair are
    dropped (the release would produce NaN). Returns the mean of the per-image terms.
    """
    b, p, _ = z_student.shape
    za = F.normalize(z_student.float(), dim=-1).reshape(b * p, -1)
    zt = F.normalize(z_teacher.float(), dim=-1).reshape(b * p, -1)
    m = F.normalize(codebook.float(), dim=-1)
    mc = m[concepts.reshape(-1)]
    c = mc @ mc.t()
    s = za @ zt.t() / tau
    own = torch.eye(b * p, dtype=torch.bool, device=za.device)
    pos, neg = (c > pos_thresh) & ~own, c < neg_thresh
    image_of = torch.arange(b, device=za.device).repeat_interleave(p)
    terms = _per_image_means(_pair_losses(s, pos, neg), pos, image_of, b)
    if bank is not None and bank.size > 0:
        zb, cb = bank.entries()
        s_bank = za @ zb.t() / tau
        c_bank = mc @ m[cb].t()
        pos_b, neg_b = c_bank > pos_thresh, c_bank < neg_thresh
        terms += _per_image_means(_pair_losses(s_bank, pos_b, neg_b), pos_b, image_of, b)
    if not terms:
        return z_student.sum() * 0.0
    return torch.stack(terms).mean()


def _per_image_means(losses: torch.Tensor, pos: torch.Tensor, image_of: torch.Tensor, b: int) -> list[torch.Tensor]:
    pair_image = image_of.unsqueeze(1).expand_as(pos)[pos]
    out = []
    for i in range(b):
        sel = pair_image == i
        if sel.any():
            out.append(losses[sel].mean())
    return out


class ConceptBank:
    """Per-concept FIFO of L2-normalised teacher vectors: a ring buffer (K, L, Dz), never checkpointed."""

    def __init__(self, num_concepts: int, length: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.buffer = torch.zeros(num_concepts, length, dim, device=device)
        self.count = torch.zeros(num_concepts, dtype=torch.long, device=device)
        self.pointer = torch.zeros(num_concepts, dtype=torch.long, device=device)
        self.length = length

    @property
    def size(self) -> int:
        return int(self.count.sum())

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All stored vectors (N, Dz) and their concept ids (N,)."""
        slots = torch.arange(self.length, device=self.buffer.device).unsqueeze(0) < self.count.unsqueeze(1)
        concept_ids = torch.arange(self.buffer.shape[0], device=self.buffer.device).unsqueeze(1).expand_as(slots)
        return self.buffer[slots], concept_ids[slots]

    @torch.no_grad()
    def update(self, z_teacher: torch.Tensor, concepts: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """For each concept hit by n sampled patches, append floor(n / 2) of them chosen at random.

        Vectorised: shuffle, group by concept (stable sort), rank within the group, keep the
        first floor(n/2) ranks and write the newest ``length`` of them into the ring.
        """
        device = self.buffer.device
        z = F.normalize(z_teacher.detach().float().reshape(-1, z_teacher.shape[-1]), dim=-1).to(device)
        c = concepts.reshape(-1).to(device)
        perm = torch.randperm(len(c), generator=generator).to(device)
        z, c = z[perm], c[perm]
        order = torch.argsort(c, stable=True)
        z, c = z[order], c[order]
        counts = torch.bincount(c, minlength=self.buffer.shape[0])
        keep = counts // 2
        rank = torch.arange(len(c), device=device) - (torch.cumsum(counts, 0) - counts)[c]
        sel = (rank < keep[c]) & (rank >= keep[c] - self.length)
        slot = (self.pointer[c] + rank) % self.length
        self.buffer[c[sel], slot[sel]] = z[sel]
        self.pointer = (self.pointer + keep) % self.length
        self.count = torch.clamp(self.count + keep, max=self.length)
