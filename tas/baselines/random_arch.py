"""``random-arch``: a random allocation of the budget, the floor an architecture search must beat.

Every searched group draws a width factor and every stage a depth factor, log-normal around 1
(``exp(σ·z)``, ``z ~ N(0, 1)``, seeded); the architecture is then the largest compound-scaled one
(:func:`~tas.baselines.scaling.uniform_scaling`) with those factors, so it meets the budget as
``uniform-depth`` does and differs from it only in how the budget is spread over groups and stages.
Channels are chosen as ``l1`` chooses them (largest producer-filter L1), so against ``l1`` and
``uniform-depth`` it isolates the allocation. Random search at equal cost is the standard sanity
baseline of architecture search (Li & Talwalkar 2019, "Random search and reproducibility for NAS");
the spread of its results over seeds says how much accuracy allocation can buy on a task at all.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..prune.arch import Arch
from ..nas.supernet import Supernet
from .base import register_baseline
from .magnitude import l1_indices
from .scaling import COMPOUND_DEPTH_EXPONENT, uniform_scaling

__all__ = ["RANDOM_ARCH_SIGMA", "random_scales"]

#: σ of the log-normal factors: one standard deviation moves a group's width fraction by e^±0.5 (0.61–1.65×)
RANDOM_ARCH_SIGMA = 0.5


def random_scales(supernet: Supernet, seed: int, sigma: float = RANDOM_ARCH_SIGMA
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """``(width factors per searched group, depth factors per stage)``, ``exp(σ·z)`` drawn with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    groups, stages = list(supernet.groups()), list(supernet.graph.stages)
    z = torch.randn(len(groups) + len(stages), generator=gen, dtype=torch.float64)
    factors = torch.exp(sigma * z).tolist()
    return dict(zip(groups, factors[:len(groups)])), dict(zip(stages, factors[len(groups):]))


@register_baseline("random-arch", scales_depth=True)
def random_arch(supernet: Supernet, model: nn.Module, metric: str, ratio: float, seed: int,
                sigma: float = RANDOM_ARCH_SIGMA, depth_exponent: float = COMPOUND_DEPTH_EXPONENT, **_: Any) -> Arch:
    """A seeded random allocation at the budget (widths and depths), channels by filter L1."""
    width_scale, depth_scale = random_scales(supernet, seed, sigma)
    widths, depths, w = uniform_scaling(supernet, metric, ratio, depth_exponent, width_scale, depth_scale)
    return supernet.make_arch(widths, depths, indices=l1_indices(model, supernet, widths), method="random-arch",
                              meta={"uniform_ratio": w, "sigma": sigma, "depth_exponent": depth_exponent})
