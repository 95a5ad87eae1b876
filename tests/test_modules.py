"""One tester for every LightningModule: built from its composed config alone, output shapes, a
checkpoint round trip through ``dhr.utils.checkpoint.load_module``, and the config round trip
(the hyper-parameters a checkpoint stores are exactly the config the module was built from)."""

from __future__ import annotations

import pytest
import torch
from conftest import model_hparams, model_node

from dhr.utils.checkpoint import MODULE_KEY, load_module

TINY_VIT = {"name": "vit_small_patch8_224", "embed_dim": 16, "depth": 1, "num_heads": 2}
SMALL_HEAD = ["model.aspp_channels=16", "model.low_level_channels=8"]
CASES = {  # option: (overrides, replaced keys, forward, expected output shapes for a (2, 3, 48, 48) batch)
    "deeplabv3plus": (SMALL_HEAD, {}, lambda m, x: {"logits": m(x)}, {"logits": (2, 9, 12, 12)}),
    "cam": ([], {}, lambda m, x: {"cams": m.cams(x)}, {"cams": (2, 8, 3, 3)}),
    "dhr": (SMALL_HEAD, {}, lambda m, x: m.forward_train(x),
            {"logits": (2, 9, 12, 12), "cams": (2, 8, 3, 3), "c4": (2, 256, 3, 3), "c5": (2, 512, 3, 3)}),
    "cause": ([], dict(backbone=TINY_VIT, num_concepts=12, reduced_dim=6, projection_dim=10, ffn_dim=16, resolution=48,
                       grid_k=2, bank_length=4),
              lambda m, x: {"features": m.teacher_features(m.tokens(x), dropout=False)}, {"features": (2, 6, 6, 6)}),
}


def build(option: str):
    from hydra.utils import get_class

    overrides, replace, _, _ = CASES[option]
    hparams = model_hparams(option, overrides, **replace)
    torch.manual_seed(0)
    return get_class(model_node(option, overrides)["_target_"])(**hparams), hparams


@pytest.mark.parametrize("option", list(CASES))
def test_module_from_config_shapes_and_round_trips(option, tmp_path):
    module, hparams = build(option)
    module.eval()
    x = torch.randn(2, 3, 48, 48)
    forward, shapes = CASES[option][2], CASES[option][3]
    with torch.no_grad():
        out = forward(module, x)
    assert {k: tuple(out[k].shape) for k in shapes} == shapes
    assert dict(module.hparams) == hparams  # config round trip: what a checkpoint stores is the config

    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint[MODULE_KEY] == f"{type(module).__module__}.{type(module).__qualname__}"
    torch.save(checkpoint, tmp_path / "m.ckpt")
    again = load_module(tmp_path / "m.ckpt", prefer_ema=False)
    assert type(again) is type(module) and dict(again.hparams) == hparams
    for key, value in module.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    with torch.no_grad():
        reloaded = forward(again, x)
    for key in shapes:
        torch.testing.assert_close(reloaded[key], out[key])


def test_a_checkpoint_of_another_class_count_is_refused_with_the_dataset_named(tmp_path):
    from dhr.errors import DHRError

    module, _ = build("deeplabv3plus")
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "m.ckpt")
    with pytest.raises(DHRError, match="predicts 9 classes but dataset VOC2012 has 21"):
        load_module(tmp_path / "m.ckpt", num_classes=21, dataset="VOC2012")
