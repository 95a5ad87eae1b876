"""Synchronised BatchNorm on any device, so that ``trainer=ddp_cpu`` means what ``trainer=ddp`` means.

PyTorch's ``SyncBatchNorm`` runs on GPUs only; on the CPU (gloo) each process would normalise
with the statistics of its own share of the batch, and a 2-process run would train a different
network from the 1-process run with the same global batch. :class:`AllReduceBatchNorm` computes
the batch statistics of the whole global batch with one all-reduce of (sum, sum of squares,
count) per layer, in float64, and differentiates through it (any device; GPU runs keep PyTorch's
own, ``conf/trainer/ddp.yaml``). :class:`SyncBatchNormAnyDevice` is the Lightning plugin that swaps
it in when training starts and back when it ends (``conf/trainer/ddp_cpu.yaml``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn


class _AnyBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm of any input rank (what a BatchNorm1d/2d/3d layer is when converted back)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 - PyTorch's name
        if input.dim() < 2:
            raise ValueError(f"expected an input of 2 or more dimensions, got {input.dim()}")


class AllReduceBatchNorm(_AnyBatchNorm):
    """Not a subclass of ``nn.SyncBatchNorm``: DDP refuses those on CPU modules."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - PyTorch's name
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.double()
        count = torch.full((1,), input.numel() / channels, dtype=torch.float64, device=input.device)
        stats = dist_fn.all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (total / (total - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = (1, channels) + (1,) * (input.dim() - 2)
        out = (input - mean.to(input.dtype).view(shape)) * torch.rsqrt(var + self.eps).to(input.dtype).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_batchnorm(module: nn.Module, source: type[nn.Module], to: type[nn.modules.batchnorm._BatchNorm]) -> nn.Module:
    """``module`` with every ``source`` layer replaced by a ``to`` holding its parameters and statistics."""
    converted = module
    if isinstance(module, source) and type(module) is not to:
        converted = to(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                converted.weight = module.weight
                converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, convert_batchnorm(child, source, to))
    return converted


class SyncBatchNormAnyDevice(TorchSyncBatchNorm):
    """Lightning's ``sync_batchnorm`` plugin with :class:`AllReduceBatchNorm` (CPU and GPU)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_batchnorm(model, nn.modules.batchnorm._BatchNorm, AllReduceBatchNorm)

    def revert(self, model: nn.Module) -> nn.Module:
        return convert_batchnorm(model, AllReduceBatchNorm, _AnyBatchNorm)
