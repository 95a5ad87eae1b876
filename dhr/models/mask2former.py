"""Mask2Former for semantic segmentation: Hugging Face transformers' model around our timm backbones.

``Mask2FormerForUniversalSegmentation`` supplies the multi-scale deformable pixel decoder, the
masked-attention transformer decoder, the Hungarian matcher and the point-sampled losses; its
defaults are the official recipe (100 queries, 10 decoder layers, weights 2/5/5, no-object 0.1,
12,544 points). Three things are ours:

* the pixel-level encoder is a :class:`TimmPixelEncoder` around any timm ``features_only``
  backbone (NCHW maps, ``.channels``), so ResNets and Swin come from one factory with local
  weight files, and nothing asks the Hub (``Mask2FormerConfig(backbone="resnet18")`` would);
* :class:`SemanticMask2FormerLoss` keeps ignore pixels (255) out of the matching and the mask
  losses (``exclude_ignore=False`` restores the official behaviour: ignore pixels are negatives
  of every mask) and all-reduces the mask count itself under any DDP (transformers#26844);
* :func:`semantic_to_instances` and :func:`semantic_inference`, the semantic-segmentation glue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dhr.errors import DHRError

MASK2FORMER_STRIDES = (4, 8, 16, 32)  # the pixel decoder's inputs: C2..C5 (the official, undilated backbone)


class Targets(NamedTuple):
    """One image's instance-style targets: a binary mask per present class, and where the labels are valid."""

    class_labels: torch.Tensor  # (K,) long
    mask_labels: torch.Tensor   # (K, H, W) float, 0 at ignore pixels
    valid: torch.Tensor         # (H, W) float, 0 at ignore pixels


def semantic_to_instances(mask: torch.Tensor, num_classes: int, ignore_index: int) -> Targets:
    """An (H, W) label map as Mask2Former targets: one mask per class present, ``ignore_index`` in none."""
    valid = mask != ignore_index
    bad = mask[valid & ((mask < 0) | (mask >= num_classes))]
    if bad.numel():
        raise DHRError(f"training mask holds class id {int(bad[0])}, outside 0..{num_classes - 1} and not "
                       f"ignore_index {ignore_index}: check the masks (wss.path) match dataset={num_classes} classes")
    classes = torch.unique(mask[valid]).long()
    masks = (mask[None] == classes[:, None, None]).float()
    return Targets(classes, masks, valid.float())


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                       size: Sequence[int] | None = None) -> torch.Tensor:
    """(N, C, H, W) class scores: softmax over classes (no-object column dropped) x sigmoid masks, summed over queries.

    The official semantic inference; ``size`` upsamples the mask logits (bilinear) before the sigmoid.
    """
    if size is not None and tuple(mask_logits.shape[-2:]) != tuple(size):
        mask_logits = F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False)
    classes = class_logits.float().softmax(-1)[..., :-1]
    return torch.einsum("nqc,nqhw->nchw", classes, mask_logits.float().sigmoid())


class TimmPixelEncoder(nn.Module):
    """A timm ``features_only`` backbone as the encoder of HF's pixel-level module (NCHW ``feature_maps``)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        reductions = tuple(backbone.feature_info.reduction())
        if len(reductions) != 4 or reductions[:2] != MASK2FORMER_STRIDES[:2] or list(reductions) != sorted(reductions):
            raise DHRError(f"Mask2Former's pixel decoder reads four maps at strides {MASK2FORMER_STRIDES} (a dilated "
                           f"last stage, e.g. 4, 8, 16, 16, also works); this backbone gives {reductions}")
        self.backbone = backbone
        self.channels = list(backbone.feature_info.channels())
        fmt = getattr(backbone, "output_fmt", "NCHW")
        self.channels_last = str(getattr(fmt, "value", fmt)) == "NHWC"  # timm Swin returns NHWC maps

    def forward(self, pixel_values: torch.Tensor) -> Any:
        from transformers.modeling_outputs import BackboneOutput

        maps = self.backbone(pixel_values)
        if self.channels_last:
            maps = [m.permute(0, 3, 1, 2).contiguous() for m in maps]
        return BackboneOutput(feature_maps=tuple(maps))


def _point_sample(x: torch.Tensor, points: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """(R, 1, H, W) maps sampled at (R, P, 2) points in [0, 1]^2 -> (R, P); bilinear, as HF's sample_point."""
    return F.grid_sample(x, 2.0 * points[:, :, None] - 1.0, align_corners=False, padding_mode=padding_mode)[:, 0, :, 0]


class SemanticMask2FormerLoss(nn.Module):
    """HF's Mask2Former loss with ignore pixels weighted out, and a DDP-aware mask count.

    With every pixel valid it computes exactly HF's numbers (a test checks this). HF's matcher
    gives the cost weights and point count; the matching itself is :meth:`match`.
    """

    def __init__(self, config: Any, *, exclude_ignore: bool = True) -> None:
        from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

        super().__init__()
        self.hf = Mask2FormerLoss(config, weight_dict={"loss_cross_entropy": config.class_weight,
                                                       "loss_mask": config.mask_weight, "loss_dice": config.dice_weight})
        self.exclude_ignore = exclude_ignore

    def num_masks(self, targets: Sequence[Targets], device: torch.device) -> torch.Tensor:
        """Average target masks per process, all-reduced across ranks (HF only does so under ``accelerate``)."""
        count = torch.as_tensor(float(sum(len(t.class_labels) for t in targets)), device=device)
        world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(count)
            world = torch.distributed.get_world_size()
        return torch.clamp(count / world, min=1)

    @torch.no_grad()
    def match(self, mask_logits: torch.Tensor, class_logits: torch.Tensor,
              targets: Sequence[Targets]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """HF's Hungarian matching, with the mask costs averaged over valid points only."""
        from scipy.optimize import linear_sum_assignment

        indices = []
        for i, target in enumerate(targets):
            probs = class_logits[i].float().softmax(-1)
            cost_class = -probs[:, target.class_labels]
            points = torch.rand(1, self.hf.matcher.num_points, 2, device=mask_logits.device)
            tgt = _point_sample(target.mask_labels[:, None].to(mask_logits), points.expand(len(target.class_labels), -1, -1))
            pred = _point_sample(mask_logits[i][:, None], points.expand(mask_logits.shape[1], -1, -1)).float()
            weight = self.point_weights(target.valid[None, None], points)  # (1, P)
            cost_mask, cost_dice = _pairwise_costs(pred, tgt.float(), weight)
            cost = self.hf.matcher.cost_mask * cost_mask + self.hf.matcher.cost_class * cost_class + self.hf.matcher.cost_dice * cost_dice
            top = torch.finfo(cost.dtype).max
            rows, cols = linear_sum_assignment(torch.nan_to_num(cost, nan=top, posinf=top, neginf=top).cpu())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def point_weights(self, valid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(R, P) weight of each sampled point: its validity, or 1 everywhere with ``exclude_ignore=False``."""
        if not self.exclude_ignore:
            return points.new_ones(points.shape[:2])
        # border padding: a valid pixel at the image edge weighs 1 (zeros would fade it towards the border)
        return _point_sample(valid.to(points).expand(points.shape[0], -1, -1, -1), points, padding_mode="border")

    def mask_losses(self, mask_logits: torch.Tensor, targets: Sequence[Targets],
                    indices: list[tuple[torch.Tensor, torch.Tensor]], num_masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Point-sampled sigmoid BCE and dice of the matched pairs (uncertainty-importance sampling)."""
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        if not len(batch):  # no labelled pixel in the whole batch: nothing to match
            zero = mask_logits.sum() * 0
            return {"loss_mask": zero, "loss_dice": zero}
        pred = mask_logits[batch, torch.cat([src for src, _ in indices])][:, None]
        tgt = torch.cat([t.mask_labels[j] for t, (_, j) in zip(targets, indices, strict=True)])[:, None].to(pred)
        valid = torch.stack([targets[int(b)].valid for b in batch])[:, None]
        with torch.no_grad():
            points = self.hf.sample_points_using_uncertainty(pred, self.hf.calculate_uncertainty, self.hf.num_points,
                                                             self.hf.oversample_ratio, self.hf.importance_sample_ratio)
            labels = _point_sample(tgt, points)
            weight = self.point_weights(valid, points)
        logits = _point_sample(pred, points).float()
        bce = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
        bce = (bce * weight).sum(1) / weight.sum(1).clamp_min(1e-6)
        probs = logits.sigmoid() * weight
        labels = labels.float() * weight
        dice = 1 - (2 * (probs * labels).sum(1) + 1) / (probs.sum(1) + labels.sum(1) + 1)
        return {"loss_mask": bce.sum() / num_masks, "loss_dice": dice.sum() / num_masks}

    def forward(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, targets: Sequence[Targets],
                aux: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> dict[str, torch.Tensor]:
        """Weighted terms of the last layer (``loss_*``) and of each auxiliary layer (``loss_*_{i}``)."""
        num_masks = self.num_masks(targets, class_logits.device)
        labels = [t.class_labels for t in targets]
        losses: dict[str, torch.Tensor] = {}
        for suffix, (cls, masks) in [("", (class_logits, mask_logits)), *((f"_{i}", a) for i, a in enumerate(aux))]:
            indices = self.match(masks, cls, targets)
            terms = {**self.mask_losses(masks, targets, indices, num_masks),
                     **self.hf.loss_labels(cls.float(), labels, indices)}
            for key, value in terms.items():
                losses[key + suffix] = value * self.hf.weight_dict[key]
        return losses


def _pairwise_costs(pred: torch.Tensor, tgt: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, K) sigmoid-BCE and dice costs of Q predicted and K target masks over P points weighted by (1, P)."""
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none") * weight
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none") * weight
    total = weight.sum().clamp_min(1e-6)
    cost_mask = (pos @ tgt.T + neg @ (1 - tgt).T) / total
    probs = pred.sigmoid() * weight
    tgt = tgt * weight
    cost_dice = 1 - (2 * probs @ tgt.T + 1) / (probs.sum(-1)[:, None] + tgt.sum(-1)[None, :] + 1)
    return cost_mask, cost_dice


class Mask2Former(nn.Module):
    """Backbone + HF pixel decoder + masked-attention decoder; ``forward`` gives class and mask logits per layer.

    Inputs are padded (zeros, bottom/right) to a multiple of ``size_divisibility`` and the mask
    logits cropped back to ceil(H / 4) x ceil(W / 4), as the official model pads its batches.
    """

    def __init__(self, *, backbone: nn.Module, num_classes: int, num_queries: int = 100, dec_layers: int = 10,
                 hidden_dim: int = 256, mask_dim: int = 256, enc_layers: int = 6, dim_feedforward: int = 2048,
                 enc_dim_feedforward: int = 1024, nheads: int = 8, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, train_num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75, exclude_ignore: bool = True,
                 size_divisibility: int = 32) -> None:
        super().__init__()
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
        from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

        # a one-block Swin stands in while HF builds the model; our encoder replaces it at once
        stand_in = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
                              out_features=["stage1", "stage2", "stage3", "stage4"])
        self.config = Mask2FormerConfig(
            backbone_config=stand_in, num_labels=num_classes, num_queries=num_queries, decoder_layers=dec_layers,
            hidden_dim=hidden_dim, feature_size=mask_dim, mask_feature_size=mask_dim, encoder_layers=enc_layers,
            dim_feedforward=dim_feedforward, encoder_feedforward_dim=enc_dim_feedforward, num_attention_heads=nheads,
            class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight,
            no_object_weight=no_object_weight, train_num_points=train_num_points, oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio, use_auxiliary_loss=True, output_auxiliary_logits=True,
        )
        hf = Mask2FormerForUniversalSegmentation(self.config)
        pixel = hf.model.pixel_level_module
        pixel.encoder = TimmPixelEncoder(backbone)
        pixel.decoder = Mask2FormerPixelDecoder(self.config, feature_channels=pixel.encoder.channels)
        pixel.decoder.apply(hf._init_weights)  # HF's own initialisation, for the rebuilt decoder only
        del hf.criterion  # SemanticMask2FormerLoss below replaces it (ignore pixels, DDP mask count)
        self.hf = hf
        self.criterion = SemanticMask2FormerLoss(self.config, exclude_ignore=exclude_ignore)
        self.size_divisibility = size_divisibility

    @property
    def backbone(self) -> nn.Module:
        return self.hf.model.pixel_level_module.encoder.backbone

    def pad(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        d = self.size_divisibility
        return F.pad(image, (0, (d - w % d) % d, 0, (d - h % d) % d))

    def forward(self, image: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(class logits (N, Q, C+1), mask logits (N, Q, ceil(H/4), ceil(W/4))) of every decoder layer, last one last."""
        h, w = image.shape[-2:]
        out = self.hf.model(pixel_values=self.pad(image), output_hidden_states=True, return_dict=True)
        size = (-(-h // 4), -(-w // 4))
        classes = [self.hf.class_predictor(state.transpose(0, 1)) for state in out.transformer_decoder_intermediate_states]
        return [(c, m[..., : size[0], : size[1]]) for c, m in zip(classes, out.masks_queries_logits, strict=True)]

    def semantic_scores(self, image: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) semantic scores of the last layer at the input resolution."""
        class_logits, mask_logits = self(image)[-1]
        return semantic_inference(class_logits, mask_logits, image.shape[-2:])
