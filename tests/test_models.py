"""Backbones and DeepLabv3+ as dhr-method.md §4 defines them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dhr.errors import DHRError
from dhr.models.backbones import create_backbone
from dhr.models.deeplabv3plus import DeepLabV3Plus, aspp_rates
from dhr.modules.segmentation import build_deeplabv3plus, legacy_nearest


def dilations(stage: nn.Module) -> list[list[int]]:
    return [[m.dilation[0] for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
            for block in stage.children()]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_output_stride_8_dilations_keep_first_block_undilated(name):
    b = create_backbone(name, output_stride=8)
    d3, d4 = dilations(b.layer3), dilations(b.layer4)
    assert all(v == 1 for v in d3[0]) and all(v == 1 for v in d4[0])
    assert all(v == 2 for blk in d3[1:] for v in blk) and all(v == 4 for blk in d4[1:] for v in blk)
    assert b.feature_info.reduction() == [4, 8, 8, 8]


def test_output_stride_16_dilates_layer4_only():
    b = create_backbone("resnet18", output_stride=16)
    assert all(v == 1 for blk in dilations(b.layer3) for v in blk)
    d4 = dilations(b.layer4)
    assert d4[0] == [1, 1] and d4[1] == [2, 2]
    assert b.feature_info.reduction() == [4, 8, 16, 16]


def test_deeplabv3plus_structure_and_shapes():
    net = build_deeplabv3plus(num_classes=5, backbone={"name": "resnet18", "output_stride": 8}, aspp_channels=256,
                              low_level_channels=48, decoder_channels=256, dropout=(0.5, 0.5, 0.1))
    aspp = net.head.aspp
    assert [br[0].dilation[0] for br in aspp.branches[1:]] == [12, 24, 36] and aspp_rates(16) == (6, 12, 18)
    assert net.head.low_level[0].out_channels == 48 and net.head.classifier.bias is None
    drops = [m.p for m in net.head.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.5, 0.5, 0.1]
    net.eval()
    out = net.forward_features(torch.randn(2, 3, 64, 80))
    assert out["logits"].shape == (2, 5, 16, 20)  # stride 4
    assert out["c5"].shape[-2:] == (8, 10) and out["c4"].shape[1] == 256
    assert [m.out_channels for m in net.head.decoder.modules() if isinstance(m, nn.Conv2d)] == [256, 256]


def test_the_test_backbone_and_narrow_heads_make_a_checkpoint_of_about_a_megabyte():
    """backbone=test_resnet with the test suite's widths: what every training test trains (conftest.TINY_HEADS)."""
    from conftest import model_hparams

    from dhr.modules.segmentation import SegmentationModule

    hparams = model_hparams("deeplabv3plus", ["backbone=test_resnet", "model.aspp_channels=16", "model.low_level_channels=8",
                                              "model.decoder_channels=16"])
    module = SegmentationModule(**hparams)
    assert module.net.backbone.feature_info.channels() == [32, 48, 192, 96]
    assert [m.out_channels for m in module.net.head.decoder.modules() if isinstance(m, nn.Conv2d)] == [16, 16]
    assert sum(p.numel() for p in module.parameters()) < 500_000  # ResNet-18 with the paper's widths: 15.8 M
    logits = module(torch.randn(2, 3, 48, 48))
    assert logits.shape == (2, 9, 12, 12)


def test_local_weights_load_bit_exact(tmp_path):
    import timm

    source = timm.create_model("resnet18", num_classes=1000)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(source.state_dict(), path)  # torchvision key layout (conv1, bn1, layer1..4, fc)
    b = create_backbone("resnet18", output_stride=16, weights=str(path))
    loaded = b.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key


def test_missing_or_mismatched_weights_give_clear_errors(tmp_path):
    with pytest.raises(DHRError, match="file not found"):
        create_backbone("resnet18", weights=str(tmp_path / "nope.pth"))
    import timm

    torch.save(timm.create_model("resnet50").state_dict(), tmp_path / "r50.pth")
    with pytest.raises(DHRError, match="r50.pth: its keys or shapes do not fit timm 'resnet18'"):
        create_backbone("resnet18", weights=str(tmp_path / "r50.pth"))


def test_legacy_nearest_picks_top_left_of_each_block():
    mask = torch.arange(64).reshape(1, 8, 8)
    small = legacy_nearest(mask, (2, 2))
    assert small.tolist() == [[[0, 4], [32, 36]]]
    odd = legacy_nearest(torch.arange(7).reshape(1, 1, 7).expand(1, 3, 7), (3, 3))
    assert odd[0, 0].tolist() == [0, 2, 4]  # floor(dst * 7 / 3)


def test_backbone_is_a_plain_module_with_feature_info():
    b = create_backbone("resnet18", output_stride=16)
    net = DeepLabV3Plus(backbone=b, num_classes=3, output_stride=16)
    assert b.feature_info.channels() == [64, 128, 256, 512]
    assert isinstance(net.head.aspp.branches[1][0], nn.Conv2d)
