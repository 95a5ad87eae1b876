"""DHR relabelling (dhr-method.md §5): each convention against its reference, the whole batch
against the literal per-cell reference in ``reference/dhr_reference/relabel.py`` (its own de-normalisation
and pydensecrf call), with the CRF on, under bf16 autocast, and with the release-parity switches."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dhr_reference.batches import random_relabel_batch
from dhr_reference.relabel import cell_is_valid, reference_relabel, vote

from dhr.ops import relabel as R
from dhr.ops.crf import CRFParams, CRFRunner, dense_crf, pydensecrf_installed

CRF = CRFParams.defaults(processes=1)


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
    cfg = R.RelabelConfig.defaults(steps=[1])
    out = R.relabel(masks, cams=cams, tags=torch.tensor([[1.0, 0.0]]), images=image, boxes=torch.tensor([[0, 0, s, s]]),
                    uss=None, wss_feats=[], num_classes=3, background_id=0, cfg=cfg, crf=CRFRunner(CRF)).masks
    assert (out[0, :16, :16] == 1).all()  # the seed is pasted
    assert (out[0, 16:, :] == 0).all() and (out[0, :, 16:] == 0).all()  # background stays
    official = R.relabel(masks, cams=cams, tags=torch.tensor([[1.0, 0.0]]), images=image, boxes=torch.tensor([[0, 0, s, s]]),
                         uss=None, wss_feats=[], num_classes=3, background_id=0,
                         cfg=R.RelabelConfig.defaults(steps=[1], step1={"bg_mode": "official"}), crf=CRFRunner(CRF)).masks
    assert (official == 1).all()  # the release's defect 7: the whole crop becomes foreground


def reference_crf():
    """The reference calls pydensecrf as the release does; where it is not installed, both sides run
    the torch backend (``CRF`` is ``auto``), which still checks every step around the CRF."""
    if pydensecrf_installed():
        return None
    return lambda image, probs: dense_crf(image, probs, CRF, backend="torch")


def reference_masks(batch: dict, cfg: R.RelabelConfig) -> list[np.ndarray]:
    return [reference_relabel(batch["masks"][i].numpy(), batch["cams"][i].numpy(), batch["tags"][i].numpy(),
                              batch["images"][i].numpy(), batch["boxes"][i].tolist(), batch["uss"][i].numpy(),
                              [f[i].numpy() for f in batch["wss_feats"]], batch["num_classes"], 0, cfg, CRF,
                              crf=reference_crf())
            for i in range(len(batch["masks"]))]


def assert_same(got: torch.Tensor, expected: list[np.ndarray]) -> None:
    for i, ref in enumerate(expected):
        same = (got[i].numpy() == ref).mean()
        assert same == 1.0, f"sample {i}: {100 * (1 - same):.3f}% of pixels differ"


PARITY = {  # dhr-method.md §10: the switches that restore the release's behaviour, alone and together
    "default": {},
    "bg_official": {"step1": {"bg_mode": "official"}},
    "cells_all": {"cell_scope": "all"},
    "mm_eps_0": {"mm_eps": 0.0},
    "release": {"step1": {"bg_mode": "official"}, "cell_scope": "all", "mm_eps": 0.0},
}


@pytest.mark.parametrize("steps", [[1], [1, 2], [1, 2, 3], [2, 3]])
def test_batched_relabel_with_the_crf_equals_the_literal_reference(steps):
    batch = random_relabel_batch(0)
    cfg = R.RelabelConfig.defaults(steps=steps, uss_patch=8)
    result = R.relabel(cfg=cfg, crf=CRFRunner(CRF), **batch)
    assert sum(int(c.sum()) for c in result.changed.values()) > 0  # the steps did relabel something
    assert_same(result.masks, reference_masks(batch, cfg))


@pytest.mark.skipif(not pydensecrf_installed(), reason="the reference calls pydensecrf (the [crf] extra)")
def test_relabel_on_the_torch_crf_equals_the_reference_on_pydensecrf():
    """The whole relabelling with the PyTorch CRF (batched crops of mixed sizes and class counts)
    against the literal reference calling pydensecrf."""
    batch = random_relabel_batch(3, batch=4)
    cfg = R.RelabelConfig.defaults(uss_patch=8)
    result = R.relabel(cfg=cfg, crf=CRFRunner(CRFParams.defaults(backend="torch")), **batch)
    assert sum(int(c.sum()) for c in result.changed.values()) > 0
    expected = [reference_relabel(batch["masks"][i].numpy(), batch["cams"][i].numpy(), batch["tags"][i].numpy(),
                                  batch["images"][i].numpy(), batch["boxes"][i].tolist(), batch["uss"][i].numpy(),
                                  [f[i].numpy() for f in batch["wss_feats"]], batch["num_classes"], 0, cfg, CRF)
                for i in range(4)]
    assert_same(result.masks, expected)


@pytest.mark.parametrize("switches", list(PARITY), ids=list(PARITY))
def test_release_parity_switches_match_the_reference(switches):
    batch = random_relabel_batch(1, full_boxes=switches in ("cells_all", "release"))
    cfg = R.RelabelConfig.defaults(uss_patch=8, **PARITY[switches])
    assert_same(R.relabel(cfg=cfg, crf=CRFRunner(CRF), **batch).masks, reference_masks(batch, cfg))


def test_relabelling_is_fp32_under_bf16_autocast():
    """Lightning's 16-mixed wraps training_step in autocast; the masks must not notice."""
    batch = random_relabel_batch(2, batch=4)
    cfg = R.RelabelConfig.defaults(uss_patch=8)
    plain = R.relabel(cfg=cfg, crf=CRFRunner(CRF), **batch).masks
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = R.relabel(cfg=cfg, crf=CRFRunner(CRF), **batch).masks
        halved = {**batch, "cams": batch["cams"].bfloat16(), "uss": batch["uss"].bfloat16()}
        from_bf16 = R.relabel(cfg=cfg, crf=CRFRunner(CRF), **halved).masks
    assert torch.equal(plain, mixed)
    reference = R.relabel(cfg=cfg, crf=CRFRunner(CRF), **{**batch, "cams": halved["cams"].float(), "uss": halved["uss"].float()})
    assert torch.equal(from_bf16, reference.masks)  # bf16 inputs are promoted, never computed in bf16


def test_invalid_switches_name_the_key():
    from dhr.errors import DHRError

    for overrides, key in (({"tau": 1.5}, "model.dhr.tau"), ({"steps": [4]}, "model.dhr.steps"),
                           ({"step1": {"bg_mode": "x"}}, "model.dhr.step1.bg_mode"), ({"bogus": 1}, "model.dhr.bogus"),
                           ({"ot": {"eps": 0}}, "model.dhr.ot.eps")):
        with pytest.raises(DHRError, match=key.replace(".", r"\.")):
            R.RelabelConfig.defaults(**overrides)


def test_the_random_batches_exercise_step3():
    """Without a Step-3 group the comparisons above would not test Step 3 at all."""
    batch = random_relabel_batch(0)
    cfg = R.RelabelConfig.defaults(uss_patch=8)
    g = batch["uss"].shape[-1]
    valid = R.valid_cells(batch["boxes"], batch["masks"].shape[-1], g, cfg.cell_scope)
    with_step3, _ = R.step23_maps(batch["masks"], batch["uss"], batch["wss_feats"], valid, batch["num_classes"], cfg)
    without, _ = R.step23_maps(batch["masks"], batch["uss"], [], valid, batch["num_classes"], cfg)
    assert not torch.allclose(with_step3, without)
