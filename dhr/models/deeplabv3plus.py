"""DeepLabv3+ exactly as ``dhr-method.md`` §4 (ASPP on C5, 48-channel low-level branch, dropouts).

The widths (ASPP 256, low-level 48, decoder 256) are the paper's; the test suite narrows them to
train a checkpoint of a few MB.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """1x1 + three atrous 3x3 + image pooling, concat, 1x1 projection, dropout."""

    def __init__(self, *, in_channels: int, channels: int = 256, rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5) -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, channels, 1)])
        self.branches.extend(conv_bn_relu(in_channels, channels, 3, r) for r in rates)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels, 1))
        self.project = nn.Sequential(conv_bn_relu(channels * (len(rates) + 2), channels, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        # bilinear from 1x1, as the release (not .expand: (1-a)x + ax differs from x in the last bit)
        outs.append(F.interpolate(self.pool(x), size=x.shape[2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on C5, upsample to C2, fuse with the 48-channel low-level branch, two 3x3 convs, classify (no bias)."""

    def __init__(
        self,
        *,
        high_channels: int,
        low_channels: int,
        num_classes: int,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        rates: Sequence[int] = (12, 24, 36),
        dropout: Sequence[float] = (0.5, 0.5, 0.1),
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels=high_channels, channels=aspp_channels, rates=rates, dropout=dropout[0])
        self.low_level = conv_bn_relu(low_channels, low_level_channels, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_channels, decoder_channels, 3),
            nn.Dropout(dropout[1]),
            conv_bn_relu(decoder_channels, decoder_channels, 3),
            nn.Dropout(dropout[2]),
        )
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)  # start near uniform class scores

    def forward(self, c2: torch.Tensor, c5: torch.Tensor) -> torch.Tensor:
        x = self.aspp(c5)
        x = F.interpolate(x, size=c2.shape[2:], mode="bilinear", align_corners=False)
        x = self.decoder(torch.cat([x, self.low_level(c2)], dim=1))
        return self.classifier(x)


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """(12, 24, 36) at output stride 8, (6, 12, 18) at 16."""
    return {8: (12, 24, 36), 16: (6, 12, 18)}.get(output_stride, (3, 6, 9))


class DeepLabV3Plus(nn.Module):
    """Backbone (C2..C5) + DeepLabv3+ head; ``forward`` gives stride-4 logits."""

    def __init__(self, *, backbone: nn.Module, num_classes: int, output_stride: int, aspp_channels: int = 256,
                 low_level_channels: int = 48, decoder_channels: int = 256,
                 dropout: Sequence[float] = (0.5, 0.5, 0.1)) -> None:
        super().__init__()
        self.backbone = backbone
        channels = backbone.feature_info.channels()
        self.head = DeepLabV3PlusHead(
            high_channels=channels[-1], low_channels=channels[0], num_classes=num_classes,
            aspp_channels=aspp_channels, low_level_channels=low_level_channels, decoder_channels=decoder_channels,
            rates=aspp_rates(output_stride), dropout=dropout,
        )

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits plus the backbone maps C2..C5 (the DHR stage reads C4/C5)."""
        c2, c3, c4, c5 = self.backbone(x)
        return {"logits": self.head(c2, c5), "c2": c2, "c3": c3, "c4": c4, "c5": c5}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c2, _, _, c5 = self.backbone(x)
        return self.head(c2, c5)
