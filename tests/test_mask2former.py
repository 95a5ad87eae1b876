"""Mask2Former on HF transformers: targets, semantic inference, the ignore-aware loss, backbones, optimiser."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from dhr.errors import DHRError
from dhr.models.backbones import create_backbone
from dhr.models.mask2former import Mask2Former, semantic_inference, semantic_to_instances

TINY = dict(num_queries=6, dec_layers=3, hidden_dim=32, mask_dim=32, enc_layers=1, dim_feedforward=64,
            enc_dim_feedforward=64, nheads=2, train_num_points=400)
TINY_SWIN = dict(out_indices=(0, 1, 2, 3), img_size=64, window_size=4, embed_dim=16, depths=(1, 1, 1, 1),
                 num_heads=(1, 1, 1, 1), strict_img_size=False)


def tiny_net(backbone: str = "resnet18", num_classes: int = 4, **kwargs) -> Mask2Former:
    torch.manual_seed(0)
    extra = TINY_SWIN if backbone.startswith("swin") else {}
    return Mask2Former(backbone=create_backbone(backbone, output_stride=32, **extra), num_classes=num_classes,
                       **{**TINY, **kwargs})


def test_semantic_to_instances_skips_ignore_and_absent_classes():
    mask = torch.tensor([[0, 0, 3, 255],
                         [0, 3, 3, 255],
                         [1, 1, 255, 255]])
    t = semantic_to_instances(mask, num_classes=5, ignore_index=255)
    assert t.class_labels.tolist() == [0, 1, 3]  # class 2 and 4 are absent: no mask for them
    assert t.mask_labels.shape == (3, 3, 4) and t.mask_labels.dtype == torch.float32
    assert t.mask_labels[2].tolist() == [[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert t.mask_labels[:, mask == 255].sum() == 0  # ignore pixels belong to no mask
    assert t.valid.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert torch.equal(t.mask_labels.sum(0), t.valid)  # every valid pixel in exactly one mask


def test_semantic_to_instances_refuses_an_unknown_class_id():
    with pytest.raises(DHRError, match="class id 7"):
        semantic_to_instances(torch.tensor([[0, 7]]), num_classes=5, ignore_index=255)
    empty = semantic_to_instances(torch.full((2, 2), 255), num_classes=5, ignore_index=255)
    assert len(empty.class_labels) == 0 and empty.mask_labels.shape == (0, 2, 2)


def test_semantic_inference_on_hand_made_logits():
    # 2 queries, 2 classes (+ no-object); query 0 says class 1 on the left column, query 1 class 0 on the right
    big = 20.0
    class_logits = torch.tensor([[[0.0, big, 0.0], [big, 0.0, 0.0]]])
    mask_logits = torch.tensor([[[[big, -big]], [[-big, big]]]])  # (1, 2, 1, 2)
    scores = semantic_inference(class_logits, mask_logits)
    assert scores.shape == (1, 2, 1, 2)
    assert scores[0].argmax(0).tolist() == [[1, 0]]
    # the exact formula: sum_q softmax(class)[q, c] * sigmoid(mask)[q]
    expected = torch.einsum("qc,qhw->chw", class_logits[0].softmax(-1)[:, :2], mask_logits[0].sigmoid())
    assert torch.allclose(scores[0], expected)
    # the no-object column takes probability away from every class
    dropped = semantic_inference(torch.tensor([[[0.0, 0.0, big], [0.0, 0.0, big]]]), mask_logits)
    assert dropped.max() < 1e-6
    up = semantic_inference(class_logits, mask_logits, size=(2, 4))
    assert up.shape == (1, 2, 2, 4) and up[0].argmax(0)[:, 0].tolist() == [1, 1]


@pytest.mark.parametrize("backbone", ["resnet18", "swin_large_patch4_window12_384"])
def test_output_shapes_for_each_backbone_family(backbone):
    net = tiny_net(backbone).eval()
    with torch.no_grad():
        layers = net(torch.randn(2, 3, 70, 90))  # not a multiple of 32: padded, then cropped back
    assert len(layers) == 3  # dec_layers predictions, the last one last
    class_logits, mask_logits = layers[-1]
    assert class_logits.shape == (2, 6, 5) and mask_logits.shape == (2, 6, 18, 23)
    scores = net.semantic_scores(torch.randn(1, 3, 64, 64))
    assert scores.shape == (1, 4, 64, 64) and torch.isfinite(scores).all()


def test_swin_maps_reach_the_decoder_channels_first():
    net = tiny_net("swin_large_patch4_window12_384")
    encoder = net.hf.model.pixel_level_module.encoder
    assert encoder.channels_last and encoder.channels == [16, 32, 64, 128]
    maps = encoder(torch.randn(1, 3, 64, 64)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2)]


def test_a_dilated_last_stage_works_and_three_maps_are_refused():
    net = Mask2Former(backbone=create_backbone("resnet18", output_stride=16), num_classes=3, **TINY).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64))[-1][1].shape == (1, 6, 16, 16)
    with pytest.raises(DHRError, match="strides"):
        Mask2Former(backbone=create_backbone("resnet18", out_indices=(2, 3, 4)), num_classes=3, **TINY)


def test_building_never_opens_a_connection(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Mask2Former tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    tiny_net()


def _outputs_and_targets(net, masks):
    layers = net(torch.randn(len(masks), 3, *masks.shape[-2:]))
    targets = [semantic_to_instances(m, net.config.num_labels, 255) for m in masks]
    return layers, targets


def test_loss_equals_hf_when_every_pixel_is_labelled():
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    net = tiny_net()
    masks = torch.randint(0, 4, (2, 64, 64))
    layers, targets = _outputs_and_targets(net, masks)
    (cls, msk), aux = layers[-1], layers[:-1]
    torch.manual_seed(1)
    ours = net.criterion(cls, msk, targets, aux)
    weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    reference = Mask2FormerLoss(net.config, weight_dict=weights)
    torch.manual_seed(1)
    theirs = reference(msk, cls, [t.mask_labels for t in targets], [t.class_labels for t in targets],
                       [{"masks_queries_logits": m, "class_queries_logits": c} for c, m in aux])
    assert sorted(ours) == sorted(theirs) and len(ours) == 3 * 3
    for key, value in theirs.items():
        assert ours[key].item() == pytest.approx(value.item() * weights[key.rstrip("_0123456789")], rel=1e-5)


def _loss_with_edited_ignore_region(exclude_ignore: bool) -> tuple[float, float]:
    # uniform points (no importance sampling): the edit must not move where the points are drawn
    net = tiny_net(exclude_ignore=exclude_ignore, train_num_points=4096, importance_sample_ratio=0.0)
    masks = torch.randint(0, 4, (1, 64, 64))
    masks[:, :, 32:] = 255  # the right half is unlabelled
    layers, targets = _outputs_and_targets(net, masks)
    losses = []
    for edit in (0.0, 30.0):  # the same predictions, with the mask logits in the ignore half pushed up
        edited = []
        for cls, msk in layers:
            msk = msk.detach().clone()
            msk[..., 9:] += edit  # mask cells whose bilinear footprint lies wholly in the ignore half
            edited.append((cls.detach(), msk))
        torch.manual_seed(3)
        total = net.criterion(edited[-1][0], edited[-1][1], targets, edited[:-1])
        losses.append(sum(v.item() for v in total.values()))
    return losses[0], losses[1]


def test_ignore_pixels_do_not_reach_the_loss():
    before, after = _loss_with_edited_ignore_region(exclude_ignore=True)
    assert after == pytest.approx(before, rel=1e-3)
    before, after = _loss_with_edited_ignore_region(exclude_ignore=False)  # the official behaviour: negatives
    assert after > before * 1.5


def test_mask_count_is_the_mean_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_count_worker, args=(str(tmp_path / "store"),), nprocs=2, join=True)
    assert sorted(float((tmp_path / f"count{r}").read_text()) for r in (0, 1)) == [2.0, 2.0]  # (1 + 3) / 2


def _count_worker(rank: int, store: str) -> None:
    import torch.distributed as dist

    from dhr.models.mask2former import SemanticMask2FormerLoss, Targets

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        loss = SemanticMask2FormerLoss.__new__(SemanticMask2FormerLoss)
        k = 1 if rank == 0 else 3
        targets = [Targets(torch.arange(k), torch.zeros(k, 2, 2), torch.ones(2, 2))]
        count = loss.num_masks(targets, torch.device("cpu"))
        (Path(store).parent / f"count{rank}").write_text(str(count.item()))
    finally:
        dist.destroy_process_group()


def test_param_groups_follow_the_official_recipe():
    from dhr.modules.optim import AdamWConfig, adamw_param_groups

    net = tiny_net()
    cfg = AdamWConfig(lr=1e-4, backbone_lr_mult=0.1, weight_decay=0.05, weight_decay_norm=0.0,
                      weight_decay_embed=0.0, poly_power=0.9, clip_grad_norm=0.01)
    groups = adamw_param_groups(net, net.backbone, cfg)
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(setting) == sum(1 for p in net.parameters() if p.requires_grad)  # each parameter once
    conv = net.backbone.conv1.weight
    bn = net.backbone.bn1.weight
    assert setting[id(conv)] == pytest.approx((1e-5, 0.05)) and setting[id(bn)] == pytest.approx((1e-5, 0.0))
    queries = net.hf.model.transformer_module.queries_features.weight  # an nn.Embedding
    assert isinstance(net.hf.model.transformer_module.queries_features, nn.Embedding)
    assert setting[id(queries)] == pytest.approx((1e-4, 0.0))
    assert setting[id(net.hf.class_predictor.weight)] == pytest.approx((1e-4, 0.05))
    layer_norms = [m for m in net.hf.modules() if isinstance(m, nn.LayerNorm)]
    assert layer_norms and all(setting[id(m.weight)] == pytest.approx((1e-4, 0.0)) for m in layer_norms)


@pytest.mark.parametrize("layout", ["timm", "official"])
def test_swin_weights_load_from_a_local_file(tmp_path, layout):
    import timm

    name = "swin_large_patch4_window12_384"
    kwargs = {k: v for k, v in TINY_SWIN.items() if k != "out_indices"}
    full = timm.create_model(name, pretrained=False, **kwargs)
    state = full.state_dict()
    if layout == "official":  # microsoft/Swin-Transformer: {"model": ...} with the index buffers saved too
        state = {"model": {**state, "layers.0.blocks.0.attn.relative_position_index": torch.zeros(16, 16, dtype=torch.long)}}
    path = tmp_path / "swin.pth"
    torch.save(state, path)
    backbone = create_backbone(name, output_stride=32, weights=path, **TINY_SWIN)
    assert torch.equal(backbone.state_dict()["layers_0.blocks.0.attn.qkv.weight"], full.layers[0].blocks[0].attn.qkv.weight)


def test_an_unlabelled_image_in_the_batch_adds_no_mask_loss():
    net = tiny_net()
    masks = torch.randint(0, 4, (2, 64, 64))
    masks[1] = 255  # the second crop holds no label at all
    layers, targets = _outputs_and_targets(net, masks)
    losses = net.criterion(layers[-1][0], layers[-1][1], targets, layers[:-1])
    assert all(torch.isfinite(v) for v in losses.values())
    alone = net.criterion(layers[-1][0][:1], layers[-1][1][:1], targets[:1], [(c[:1], m[:1]) for c, m in layers[:-1]])
    assert losses["loss_dice"].item() == pytest.approx(alone["loss_dice"].item(), rel=0.2)  # same masks, same count
