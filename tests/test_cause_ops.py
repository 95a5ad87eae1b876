"""CAUSE building blocks against literal references: modularity, contrastive loss, bank, Hungarian, heads, ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dhr_reference.modularity import modularity_loss_reference

from dhr.errors import DHRError
from dhr.ops.contrastive import ConceptBank, concept_contrastive_loss
from dhr.ops.hungarian import cluster_histogram, hungarian_scores
from dhr.ops.modularity import grid_sample_indices, modularity_loss


def test_modularity_matches_the_full_tensor_formula_in_value_and_gradient():
    torch.manual_seed(0)
    x = torch.randn(3, 24, 16)
    m1 = (torch.rand(50, 16) * 2 - 1).requires_grad_()
    m2 = m1.detach().clone().requires_grad_()
    ours, ref = modularity_loss(x, m1, chunk=7), modularity_loss_reference(x, m2)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(m1.grad, m2.grad, atol=1e-7, rtol=1e-5)
    assert m1.grad.abs().sum() > 0


def test_modularity_guard_drops_images_without_affinity():
    codebook = torch.rand(8, 4, requires_grad=True)
    one_patch = torch.randn(2, 1, 4)  # a single sampled patch: e = 0
    loss = modularity_loss(one_patch, codebook)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()


def test_grid_sampling_keeps_one_patch_per_window():
    idx = grid_sample_indices(9, 10, 4, batch=5, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (5, 4)  # 2 x 2 windows, remainder dropped
    ys, xs = idx // 10, idx % 10
    assert ((ys // 4) * 2 + xs // 4).sort(dim=1).values.tolist() == [[0, 1, 2, 3]] * 5
    assert (ys < 8).all() and (xs < 8).all()


def contrastive_reference(zs, zt, concepts, codebook, tau=0.07, hi=0.3, lo=0.1):
    """Literal per-anchor loops of cause-method.md §6.3 (batch candidates only)."""
    b, p, _ = zs.shape
    zs, zt = F.normalize(zs, dim=-1), F.normalize(zt, dim=-1)
    m = F.normalize(codebook, dim=-1)
    flat_t = zt.reshape(b * p, -1)
    flat_c = concepts.reshape(-1)
    terms = []
    for bi in range(b):
        pair_losses = []
        for i in range(p):
            s = flat_t @ zs[bi, i] / tau
            c = m[flat_c] @ m[concepts[bi, i]]
            own = bi * p + i
            pos = [j for j in range(b * p) if c[j] > hi and j != own]
            neg = [j for j in range(b * p) if c[j] < lo]
            if not pos:
                continue
            lse = torch.logsumexp(s[pos + neg], 0)
            pair_losses += [lse - s[j] for j in pos]
        if pair_losses:
            terms.append(torch.stack(pair_losses).mean())
    return torch.stack(terms).mean()


def test_contrastive_loss_matches_the_literal_rule():
    torch.manual_seed(1)
    codebook = torch.randn(6, 5)
    concepts = torch.randint(0, 6, (3, 7))
    zs, zt = torch.randn(3, 7, 12), torch.randn(3, 7, 12)
    ours = concept_contrastive_loss(zs, zt, concepts, codebook)
    torch.testing.assert_close(ours, contrastive_reference(zs, zt, concepts, codebook), atol=1e-5, rtol=1e-5)


def test_contrastive_loss_without_positives_is_zero_not_nan():
    codebook = torch.eye(4)
    concepts = torch.arange(4).view(1, 4)  # every patch a different, orthogonal concept
    zs = torch.randn(1, 4, 8, requires_grad=True)
    loss = concept_contrastive_loss(zs, torch.randn(1, 4, 8), concepts, codebook)
    assert loss.item() == 0.0
    loss.backward()


def test_bank_keeps_half_of_each_concept_and_the_newest_entries():
    bank = ConceptBank(num_concepts=3, length=4, dim=2)
    g = torch.Generator().manual_seed(0)
    concepts = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2])
    bank.update(torch.randn(8, 2), concepts, generator=g)
    assert bank.count.tolist() == [2, 0, 1]  # floor(5/2), floor(1/2), floor(2/2)
    for _ in range(5):
        bank.update(torch.randn(8, 2), concepts, generator=g)
    assert bank.count.tolist() == [4, 0, 4]
    z, c = bank.entries()
    assert z.shape == (8, 2) and torch.allclose(z.norm(dim=1), torch.ones(8))
    assert c.tolist() == [0] * 4 + [2] * 4


def test_contrastive_loss_uses_the_bank():
    torch.manual_seed(2)
    codebook = torch.randn(4, 5)
    concepts = torch.randint(0, 4, (2, 6))
    zs, zt = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    bank = ConceptBank(4, 5, 8)
    without = concept_contrastive_loss(zs, zt, concepts, codebook, bank=bank)
    bank.update(torch.randn(2, 6, 8), concepts)
    with_bank = concept_contrastive_loss(zs, zt, concepts, codebook, bank=bank)
    assert torch.isfinite(with_bank) and not torch.isclose(without, with_bank)


def test_hungarian_matching_recovers_a_permutation():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (50, 60))
    perm = np.array([2, 0, 3, 1])
    pred = perm[gt]
    gt[0, :5] = 255  # ignored
    s = hungarian_scores(cluster_histogram(pred, gt, 4))
    assert s.miou == 100.0 and s.pixel_accuracy == 100.0
    assert s.assignment[perm].tolist() == [0, 1, 2, 3]
    noisy = pred.copy()
    noisy[:10] = 0
    assert hungarian_scores(cluster_histogram(noisy, gt, 4)).miou < 100.0


def test_dino_layout_checkpoint_loads_bit_exact(tmp_path):
    import timm

    from dhr.models.vit import FrozenViT

    tiny = dict(embed_dim=32, depth=2, num_heads=2)
    source = timm.create_model("vit_small_patch8_224", num_classes=0, **tiny)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    state = source.state_dict()
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight"} <= set(state)
    torch.save(state, tmp_path / "dino_tiny.pth")  # official DINO layout: plain state dict, no head
    vit = FrozenViT("vit_small_patch8_224", weights=tmp_path / "dino_tiny.pth", **tiny)
    for key, value in state.items():
        assert torch.equal(vit.vit.state_dict()[key], value), key
    feats = vit(torch.randn(2, 3, 64, 96))
    assert feats.shape == (2, 32, 8, 12)
    assert not any(p.requires_grad for p in vit.parameters())
    with pytest.raises(DHRError, match="file not found"):
        FrozenViT("vit_small_patch8_224", weights=tmp_path / "missing.pth", **tiny)
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(DHRError, match="wrong.pth"):
        FrozenViT("vit_small_patch8_224", weights=tmp_path / "wrong.pth", **tiny)


def test_tr_head_state_dict_has_release_names_and_no_codebook():
    from dhr.models.cause_heads import SegmentTR

    head = SegmentTR(dim=16, num_queries=12, reduced_dim=6, ffn_dim=32, num_concepts=10)
    keys = set(head.state_dict())
    assert "codebook" not in keys and "query_pos" in keys
    for name in ("tr.self_attn.in_proj_weight", "tr.multihead_attn.out_proj.weight", "tr.linear1.weight",
                 "tr.norm3.bias", "tr.f1.weight", "tr.f2.0.weight", "tr.f2.2.bias"):
        assert name in keys, name
    head.codebook.copy_(torch.randn(10, 16))
    head.eval()
    out = head(torch.randn(2, 16, 3, 5))  # non-square grid: query_pos resampled 12 → 15
    assert out.shape == (2, 6, 3, 5)


def test_unweighted_vit_is_the_same_in_every_process():
    from dhr.models.vit import FrozenViT

    tiny = dict(embed_dim=16, depth=1, num_heads=2)
    torch.manual_seed(123)
    a = FrozenViT("vit_small_patch8_224", **tiny)
    torch.manual_seed(456)
    b = FrozenViT("vit_small_patch8_224", **tiny)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    c = FrozenViT("vit_small_patch8_224", init_seed=1, **tiny)
    assert not torch.equal(a.vit.patch_embed.proj.weight, c.vit.patch_embed.proj.weight)


def test_family_merges_counts_grouped_and_merged_families():
    from dhr.ops.hungarian import family_merges

    families = [[1, 2], [3, 4], [5, 6]]
    counts = np.zeros((7, 4))
    counts[[1, 2], 0] = 10     # family 0: one cluster of its own
    counts[[3, 4], [1, 2]] = 10  # family 1: split over two clusters
    counts[[5, 6], [2, 2]] = 10  # family 2: shares cluster 2 with family 1
    f = family_merges(counts, families)
    assert f.within == pytest.approx(2 / 3)
    assert f.across == pytest.approx(1 / 3)
    assert f.families_apart == pytest.approx(2 / 3)  # family 1 keeps cluster 1, family 2 owns none
    counts[:, :] = 0
    counts[1:7, 3] = 5           # everything in one cluster
    f = family_merges(counts, families)
    assert (f.within, f.across, f.families_apart) == (1.0, 1.0, 0.0)
