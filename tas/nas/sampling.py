"""Gumbel sampling of width fragments and depth mixtures, and the temperature schedule (TAS).

TAS perturbs each layer's width logits with Gumbel noise, ``p̂ = softmax((log_softmax(α) + g) / τ)``,
draws K candidates from ``p̂`` without replacement, and mixes their feature maps with the softmax of
the perturbed logits restricted to those K. Depth mixes *all* candidate depths with ``p̂`` itself.
This follows the official code (``select2withP``); gradients reach α through the mixing weights.
"""
from __future__ import annotations

import math

import torch

__all__ = ["gumbel_noise", "perturbed_logits", "gumbel_softmax", "sample_without_replacement",
           "gumbel_topk", "tau_at"]


def gumbel_noise(shape: torch.Size, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard Gumbel(0, 1) noise; ``-log(Exp(1))`` never yields inf, unlike ``-log(-log(U))``."""
    e = torch.empty(shape, device=device).exponential_(generator=generator)
    return -torch.log(e.clamp_min(torch.finfo(e.dtype).tiny))


def perturbed_logits(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(log_softmax(logits) + g) / tau`` with fresh Gumbel noise ``g``."""
    g = gumbel_noise(logits.shape, generator, logits.device)
    return (torch.log_softmax(logits, dim=-1) + g) / tau


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed one-hot sample ``p̂`` over all candidates (used for the depth mixture)."""
    return torch.softmax(perturbed_logits(logits, tau, generator), dim=-1)


def sample_without_replacement(probs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``k`` distinct indices with probabilities ``probs`` (sequentially renormalised)."""
    k = min(k, probs.numel())
    # The eps keeps multinomial valid when τ is small enough for p̂ to underflow to one-hot.
    return torch.multinomial(probs.detach().float() + 1e-7, k, replacement=False, generator=generator)


def gumbel_topk(logits: torch.Tensor, tau: float, k: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TAS fragment sampling: ``k`` candidate indices and their differentiable mixing weights."""
    z = perturbed_logits(logits, tau, generator)
    index = sample_without_replacement(torch.softmax(z, dim=-1), k, generator)
    return index, torch.softmax(z[index], dim=-1)


def tau_at(progress: float, tau_max: float = 5.0, tau_min: float = 0.1, schedule: str = "cosine") -> float:
    """Temperature after ``progress`` ∈ [0, 1] of the search.

    ``cosine`` (official code, default) decays 5 → 0.1 along half a cosine; ``linear`` is the paper's
    10 → 0.1 straight line when called with ``tau_max=10``.
    """
    p = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return tau_min + (tau_max - tau_min) * (1 + math.cos(math.pi * p)) / 2
    if schedule == "linear":
        return tau_max - (tau_max - tau_min) * p
    raise ValueError(f"unknown tau schedule {schedule!r} (cosine, linear)")
