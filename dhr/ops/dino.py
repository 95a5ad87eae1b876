"""The DINO objective (Caron et al., ICCV 2021): self-distillation with a centred, sharpened teacher.

The teacher sees the global crops, the student every crop; each student crop is pulled towards
the teacher's distribution of every *other* view. The teacher's logits are centred (minus a
running mean of its outputs) and sharpened (a low temperature), the two forces that keep the
pair from collapsing to one constant output or to a uniform one. The teacher's weights are an
EMA of the student's, with a momentum that rises to 1 on a cosine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def dino_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], center: torch.Tensor, *,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Mean over (teacher view i, student view j != i) pairs of H(softmax((t_i - c) / T_t), softmax(s_j / T_s)).

    ``student``: one (B, K) logit tensor per crop, the global crops first in the teacher's order;
    ``teacher``: one (B, K) tensor per global crop; ``center``: (K,) or (1, K).
    """
    targets = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    total, pairs = student[0].new_zeros(()), 0
    for i, target in enumerate(targets):
        for j, log_prob in enumerate(log_probs):
            if i == j:  # the same view: no distillation from itself
                continue
            total = total + torch.sum(-target * log_prob, dim=-1).mean()
            pairs += 1
    return total / max(pairs, 1)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: Sequence[torch.Tensor], momentum: float) -> torch.Tensor:
    """The centre's EMA over the batch mean of every teacher output (all global crops, of every DDP rank)."""
    batch_mean = torch.cat([t.detach() for t in teacher]).mean(0, keepdim=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(batch_mean)  # ranks hold equal batch sizes: the mean of means is the mean
        batch_mean /= torch.distributed.get_world_size()
    return center * momentum + batch_mean * (1.0 - momentum)


def teacher_momentum(step: int, total_steps: int, base: float) -> float:
    """Cosine schedule of the teacher's EMA momentum: ``base`` at step 0, 1.0 at the last step."""
    progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
