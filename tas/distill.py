"""Knowledge distillation of the slim network from its teacher (Hinton et al. 2015; TAS's last stage).

``L = (1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))`` with the teacher frozen in
eval mode; α = 0.9 and T = 4 as in the TAS code.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["kd_loss", "distillation_loss"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            alpha: float = 0.9, temperature: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, ce, kd)``: the KD objective and its two terms (``kd`` already scaled by T²)."""
    ce = F.cross_entropy(student_logits, targets)
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    kd = kl * t * t
    return (1 - alpha) * ce + alpha * kd, ce, kd


def distillation_loss(teacher: nn.Module, alpha: float = 0.9, temperature: float = 4.0
                      ) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]:
    """A training ``loss_fn(model, images, targets)`` distilling from the frozen ``teacher``."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(model: nn.Module, images: torch.Tensor, targets: torch.Tensor):
        with torch.no_grad():
            t_logits = teacher.eval()(images)
        total, ce, kd = kd_loss(model(images), t_logits, targets, alpha, temperature)
        return total, {"ce": ce.detach(), "kd": kd.detach()}

    return loss_fn
