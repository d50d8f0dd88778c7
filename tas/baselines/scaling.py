"""Uniform scaling rules: every group the same width fraction ``w``, optionally every stage the same
depth fraction ``d = w^k`` (EfficientNet-style compound scaling), the largest scale within a budget.

``uniform`` keeps full depth (:func:`tas.baselines.magnitude.uniform_widths`), so it cannot go below
:func:`~tas.baselines.width_only_minimum` (cifar_resnet20: 0.132 of the FLOPs). ``uniform-depth``
shrinks depth with width, so every ratio of the space has a trivial rule to beat.

The exponent comes from EfficientNet (Tan & Le 2019, eq. 3): one compound coefficient φ scales depth
by α^φ and width by β^φ with α = 1.2, β = 1.1 (found by grid search so that α·β² ≈ 2). Eliminating φ,
``d = w^k`` with ``k = ln α / ln β ≈ 1.91``: FLOPs ∝ d·w² fall about equally through depth and width.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch.nn as nn

from ..prune.arch import Arch
from ..nas.supernet import Supernet
from .base import full_depths, register_baseline

__all__ = ["COMPOUND_DEPTH_EXPONENT", "uniform_scaling"]

#: EfficientNet's depth / width coefficients α = 1.2, β = 1.1 as one exponent: d = w ** (ln α / ln β)
COMPOUND_DEPTH_EXPONENT = math.log(1.2) / math.log(1.1)


def _events(supernet: Supernet, depth_exponent: float | None, width_scale: Mapping[str, float] | None = None,
            depth_scale: Mapping[str, float] | None = None) -> list[tuple]:
    """Every point of the scale ``w`` where one group's width or one stage's depth moves up one candidate.

    Each group keeps the candidate closest to ``s·w·C`` (``s``: its factor in ``width_scale``, default
    1): it moves from ``a`` to ``b`` at ``w = (a + b) / 2sC``. Each stage keeps the depth candidate
    closest to ``d·N`` with ``d = (s·w)^k`` (``s`` from ``depth_scale``): from ``a`` to ``b`` at
    ``w = ((a + b) / 2N)^(1/k) / s``.
    Sorted by ``w``; ties in graph order, widths first (at a tie either candidate is closest).
    """
    width_scale, depth_scale = width_scale or {}, depth_scale or {}
    events = [((a + b) / (2 * g.channels) / width_scale.get(n, 1.0), 0, order, n, b)
              for order, (n, g) in enumerate(supernet.groups().items()) for a, b in zip(g.widths, g.widths[1:])]
    if depth_exponent is not None:
        for order, (n, stage) in enumerate(supernet.graph.stages.items()):
            cands = supernet.stage_depths[n]
            events += [(((a + b) / (2 * stage.num_blocks)) ** (1 / depth_exponent) / depth_scale.get(n, 1.0),
                        1, order, n, b)
                       for a, b in zip(cands, cands[1:])]
    return sorted(events)


def uniform_scaling(supernet: Supernet, metric: str, ratio: float, depth_exponent: float | None = None,
                    width_scale: Mapping[str, float] | None = None, depth_scale: Mapping[str, float] | None = None,
                    depths: Mapping[str, int] | None = None) -> tuple[dict[str, int], dict[str, int], float]:
    """The largest uniformly scaled architecture within ``ratio`` of the full ``metric``: ``(widths, depths, w)``.

    ``width_scale`` / ``depth_scale`` multiply ``w`` for single groups / stages (by name;
    ``random-arch`` draws these factors): the architecture is uniform up to those factors.
    ``depths`` fixes every stage's depth (a searched architecture's, say) and scales widths only;
    it excludes ``depth_exponent``.

    Walks the events of :func:`_events` in order of ``w`` from the smallest architecture (every
    group at its narrowest candidate; every stage at its shallowest, or at full depth when
    ``depth_exponent`` is None, or at ``depths``). Each event steps one group or stage by one
    candidate, so the cost only grows; the last architecture within the budget is returned with its
    ``w``. It misses the budget by less than the cost of the step that would exceed it.
    """
    if depths is not None and depth_exponent is not None:
        raise ValueError("uniform_scaling: fixed depths and a depth exponent exclude each other")
    widths = {n: g.widths[0] for n, g in supernet.groups().items()}
    if depths is not None:
        depths = {n: int(depths[n]) for n in supernet.graph.stages}
    elif depth_exponent is None:
        depths = full_depths(supernet)
    else:
        depths = {n: supernet.stage_depths[n][0] for n in supernet.graph.stages}
    target = ratio * supernet.full[metric]
    w = 0.0
    for at, kind, _, n, value in _events(supernet, depth_exponent, width_scale, depth_scale):
        trial_w, trial_d = ({**widths, n: value}, depths) if kind == 0 else (widths, {**depths, n: value})
        if supernet.cost.exact(metric, trial_w, trial_d) > target:
            break
        widths, depths, w = trial_w, trial_d, at
    return widths, depths, w


@register_baseline("uniform-depth", scales_depth=True)
def uniform_depth(supernet: Supernet, model: nn.Module, metric: str, ratio: float, seed: int,
                  depth_exponent: float = COMPOUND_DEPTH_EXPONENT, **_: Any) -> Arch:
    """Compound scaling: width fraction ``w`` for every group, depth fraction ``w^k`` for every stage;
    each group keeps its first channels and each stage its first blocks."""
    widths, depths, w = uniform_scaling(supernet, metric, ratio, depth_exponent)
    return supernet.make_arch(widths, depths, method="uniform-depth",
                              meta={"uniform_ratio": w, "depth_ratio": w ** depth_exponent,
                                    "depth_exponent": depth_exponent})
