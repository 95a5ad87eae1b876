"""DHR relabelling (dhr-method.md §5): each convention against its reference, the whole batch
against the literal per-cell reference in ``reference_relabel.py``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dhr.ops import relabel as R
from tests.reference_relabel import blank_outside_boxes, cell_is_valid, reference_relabel, vote


def test_opencv_and_legacy_nearest_indices_match_the_libraries():
    for n_in, n_out in ((512, 518), (96, 96), (37, 100), (100, 37)):
        src = np.tile(np.arange(n_in, dtype=np.uint16), (2, 1))
        expected = cv2.resize(src, (n_out, 2), interpolation=cv2.INTER_NEAREST)[0]
        assert np.array_equal(R.opencv_nearest_index(n_in, n_out), expected)
    for n_in, n_out in ((32, 37), (512, 128), (5, 96)):
        ref = F.interpolate(torch.arange(n_in, dtype=torch.float32).view(1, 1, 1, n_in), size=(1, n_out), mode="nearest")
        assert torch.equal(R.legacy_nearest_index(n_in, n_out), ref.view(-1).long())


@pytest.mark.parametrize(("s", "patch"), [(512, 14), (96, 8), (64, 8)])
def test_majority_vote_equals_the_per_cell_opencv_rule(s, patch):
    rng = np.random.default_rng(s)
    masks = rng.choice([0, 1, 2, 3, 255], size=(2, s, s), p=[0.4, 0.2, 0.2, 0.1, 0.1]).astype(np.int64)
    masks[1, : s // 3] = 2  # large uniform area: ties and duplicated rows
    g = R.working_grid(s, patch)
    got = R.majority_vote(torch.from_numpy(masks), g, patch, num_classes=4)
    for i in range(2):
        assert np.array_equal(got[i].numpy(), vote(masks[i], g, patch))


def test_valid_cells_and_prototypes_on_a_hand_made_case():
    boxes = torch.tensor([[0, 0, 64, 64], [8, 0, 56, 40]])
    valid = R.valid_cells(boxes, 64, 16)
    for i in range(2):
        assert np.array_equal(valid[i].numpy(), cell_is_valid(boxes[i].tolist(), 64, 16, "valid"))
    # 2x2 grid, features 2-d: class 0 on two cells, class 1 on one, one unlabelled
    feats = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[0.0, 2.0], [4.0, 6.0]]]])
    labels = torch.tensor([[[0, 0], [1, 255]]])
    protos, present = R.prototypes(feats, labels, torch.ones(1, 2, 2, dtype=torch.bool), num_classes=3)
    assert present.tolist() == [[True, True, False]]
    torch.testing.assert_close(protos[0, 0], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(protos[0, 1], torch.tensor([5.0, 4.0]))
    torch.testing.assert_close(protos[0, 2], torch.zeros(2))


def test_cam_normalisation_uses_the_full_canvas_map():
    cams = torch.zeros(1, 2, 4, 4)
    cams[0, 0, 0, 0] = 4.0  # peak in a padding cell
    cams[0, 0, 3, 3] = 2.0
    cams[0, 1, 3, 3] = -1.0
    a = R.normalised_cams(cams, torch.tensor([[1.0, 1.0]]), 1e-5)
    assert a[0, 0, 3, 3] == 0.5 and a[0, 1].abs().sum() == 0


def test_pixel_sampling_is_a_bilinear_resize_when_every_cell_is_valid():
    heat = torch.rand(2, 3, 16, 16)
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    got = R.sample_at_pixels(heat, valid, 64)
    torch.testing.assert_close(got, F.interpolate(heat, size=(64, 64), mode="bilinear", align_corners=False))


def test_step1_power_mode_keeps_background_on_a_one_class_image():
    s = 32
    masks = torch.zeros(1, s, s, dtype=torch.long)
    cams = torch.zeros(1, 2, 2, 2)
    cams[0, 0, 0, 0] = 5.0  # one strong cell of the only tagged class
    image = torch.zeros(1, 3, s, s)
    cfg = R.RelabelConfig(steps=[1])
    out = R.relabel(masks, cams=cams, tags=torch.tensor([[1.0, 0.0]]), images=image, boxes=torch.tensor([[0, 0, s, s]]),
                    uss=None, wss_feats=[], num_classes=3, background_id=0, cfg=cfg).masks
    assert (out[0, :16, :16] == 1).all()  # the seed is pasted
    assert (out[0, 16:, :] == 0).all() and (out[0, :, 16:] == 0).all()  # background stays
    official = R.relabel(masks, cams=cams, tags=torch.tensor([[1.0, 0.0]]), images=image, boxes=torch.tensor([[0, 0, s, s]]),
                         uss=None, wss_feats=[], num_classes=3, background_id=0,
                         cfg=R.RelabelConfig(steps=[1], bg_mode="official")).masks
    assert (official == 1).all()  # the release's defect 7: the whole crop becomes foreground


def random_batch(seed: int, s: int = 64, b: int = 3):
    """Masks from a noisy block layout, USS features where classes 1 and 2 are near-identical."""
    g = torch.Generator().manual_seed(seed)
    num_classes = 5
    truth = torch.zeros(b, s, s, dtype=torch.long)
    for i in range(b):
        for cls in range(1, num_classes):
            y, x = torch.randint(0, s - 16, (2,), generator=g).tolist()
            hh, ww = torch.randint(6, 24, (2,), generator=g).tolist()
            truth[i, y : y + hh, x : x + ww] = cls
    masks = truth.clone()
    noise = torch.rand(b, s, s, generator=g)
    masks[noise < 0.1] = 255
    masks[(noise > 0.1) & (noise < 0.15)] = 0
    boxes = torch.tensor([[0, 0, s, s], [8, 0, s - 8, s], [0, 10, s, s - 6]])[:b]
    images = torch.randn(b, 3, s, s, generator=g) * 0.5
    images += truth[:, None].float() * 0.3
    blank_outside_boxes(masks, images, boxes)
    grid = R.working_grid(s, 8)
    base = torch.randn(num_classes, 6, generator=g)
    base[2] = base[1] + 0.05 * torch.randn(6, generator=g)
    small = F.interpolate(truth[:, None].float(), size=(grid, grid), mode="nearest")[:, 0].long()
    uss = base[small].permute(0, 3, 1, 2) + 0.3 * torch.randn(b, 6, grid, grid, generator=g)
    c4 = torch.randn(b, 7, s // 8, s // 8, generator=g)
    c5 = torch.randn(b, 9, s // 8, s // 8, generator=g)
    cams = torch.randn(b, num_classes - 1, s // 16, s // 16, generator=g) * 2
    tags = torch.zeros(b, num_classes - 1)
    for i in range(b):
        for cls in torch.unique(truth[i]).tolist():
            if cls:
                tags[i, cls - 1] = 1
    tags[0, 3] = 0  # a class whose seed "vanished" from the tags' view
    return dict(masks=masks, cams=cams, tags=tags, images=images, boxes=boxes, uss=uss, wss_feats=[c4, c5],
                num_classes=num_classes, background_id=0)


@pytest.mark.parametrize("steps", [[1], [1, 2], [1, 2, 3], [2, 3]])
def test_batched_relabel_equals_the_literal_reference(steps):
    batch = random_batch(0)
    cfg = R.RelabelConfig(steps=steps, uss_patch=8, tau=0.8)
    got = R.relabel(cfg=cfg, **batch).masks
    for i in range(len(got)):
        ref = reference_relabel(batch["masks"][i].numpy(), batch["cams"][i].numpy(), batch["tags"][i].numpy(),
                                batch["images"][i].numpy(), batch["boxes"][i].tolist(), batch["uss"][i].numpy(),
                                [f[i].numpy() for f in batch["wss_feats"]], batch["num_classes"], 0, cfg)
        same = (got[i].numpy() == ref).mean()
        assert same == 1.0, f"sample {i}: {100 * (1 - same):.3f}% of pixels differ"
