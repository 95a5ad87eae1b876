"""Multi-scale + flip inference and the EMA callback."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dhr.callbacks.ema import EMA
from dhr.ops.inference import multiscale_probs


class Stride4(nn.Module):
    """A fixed 'network': per-pixel logits from colour, average-pooled to stride 4."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x * 3.0, 4, ceil_mode=True)


def test_single_scale_no_flip_equals_upsampled_softmax():
    x = torch.randn(1, 3, 32, 40)
    got = multiscale_probs(Stride4(), x, scales=[1.0], flip=False)
    ref = F.interpolate(torch.softmax(Stride4()(x), 1), size=(32, 40), mode="bilinear", align_corners=True)
    torch.testing.assert_close(got, ref)
    assert torch.allclose(got.sum(1), torch.ones(1, 32, 40))


def test_flip_averaging_is_flip_equivariant():
    x = torch.randn(1, 3, 33, 47)
    a = multiscale_probs(Stride4(), x, scales=[1.0, 0.5, 1.5], flip=True)
    b = multiscale_probs(Stride4(), x.flip(-1), scales=[1.0, 0.5, 1.5], flip=True)
    torch.testing.assert_close(a, b.flip(-1), atol=1e-5, rtol=1e-5)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.bn = nn.BatchNorm2d(1)


def test_ema_update_rule_and_integer_buffers():
    module = Tiny()
    ema = EMA(decay=0.9)
    ema._init(module)
    start = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        module.conv.weight.add_(1.0)
        module.bn.running_mean.add_(2.0)
        module.bn.num_batches_tracked.add_(5)
    ema.on_train_batch_end(None, module, None, None, 0)
    torch.testing.assert_close(ema.ema["conv.weight"], start["conv.weight"] + 0.1)
    torch.testing.assert_close(ema.ema["bn.running_mean"], start["bn.running_mean"] + 0.2)
    assert ema.ema["bn.num_batches_tracked"].item() == 0  # integer buffers keep their initial value
    ckpt: dict = {}
    ema.on_save_checkpoint(None, module, ckpt)
    restored = EMA(decay=0.9)
    restored.on_load_checkpoint(None, module, ckpt)
    torch.testing.assert_close(restored.ema["conv.weight"], ema.ema["conv.weight"])
