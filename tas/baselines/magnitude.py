"""Width-only baselines with uniform widths: ``uniform`` (prefix), ``l1`` (Li et al. 2017), ``random``.

Widths: every group keeps the candidate closest to ``r × channels`` for one fraction ``r`` shared by
all groups, the largest ``r`` whose exact cost meets the budget (:func:`uniform_widths`). The three
methods differ only in *which* channels a group keeps.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from ..prune.arch import Arch
from ..prune.channel_order import filter_l1_scores
from ..prune.graph import ModelGraph
from ..nas.supernet import Supernet
from .base import full_depths, register_baseline
from .scaling import uniform_scaling
from .shrink import expand_local

__all__ = ["uniform_widths", "l1_channel_scores", "l1_indices", "top_channels", "random_channels"]


def uniform_widths(supernet: Supernet, metric: str, ratio: float,
                   depths: Mapping[str, int] | None = None) -> tuple[dict[str, int], float]:
    """The widest uniform architecture within ``ratio`` of the full ``metric`` at full depth (or at
    ``depths``): ``(widths, r)``.

    As ``r`` grows from 0 each group's closest candidate to ``r·C`` moves up one candidate at a
    time, at the midpoints ``(w_j + w_{j+1}) / 2C``. Walking those events in order of ``r`` (groups
    sharing a midpoint one after the other, in graph order: at a tie either candidate is closest)
    gives a chain of architectures of increasing cost, each a step of one group by one candidate;
    the last one within the budget is returned with its ``r`` (:func:`~tas.baselines.scaling.uniform_scaling`
    without depth). So the result misses the budget by less than one candidate step of one group.
    """
    widths, _, r = uniform_scaling(supernet, metric, ratio, depth_exponent=None, depths=depths)
    return widths, r


def producers(graph: ModelGraph, group: str) -> list[str]:
    """Names of the convs whose output channels are ``group``'s channels."""
    return [l.name for l in graph.layers if l.kind == "conv" and l.out_group == group]


#: the ``l1`` baseline's score (Li et al. 2017); also the ``filters`` channel order of a search
l1_channel_scores = filter_l1_scores


def _local(scores: torch.Tensor, conv_groups: int) -> torch.Tensor:
    """Score per local position of a conv-grouped group (the sum over the conv groups)."""
    return scores.view(conv_groups, -1).sum(0) if conv_groups > 1 else scores


def top_channels(scores: torch.Tensor, width: int, conv_groups: int = 1) -> list[int]:
    """The ``width`` channels of highest score (ties: lower index first).

    For a conv-grouped group the ``width / conv_groups`` local positions of highest summed score are
    kept in every conv group, so the slim conv stays grouped.
    """
    local = _local(scores.double(), conv_groups).numpy()
    k = width // conv_groups
    order = np.lexsort((np.arange(local.size), -local))  # descending score, then ascending index
    return expand_local(order[:k].tolist(), scores.numel(), conv_groups)


def l1_indices(model: nn.Module, supernet: Supernet, widths: dict[str, int]) -> dict[str, list[int]]:
    """Per group, the ``widths[group]`` channels of largest producer-filter L1 norm (``l1``'s choice)."""
    scores = l1_channel_scores(model, supernet.graph)
    return {n: top_channels(scores[n], widths[n], g.conv_groups) for n, g in supernet.graph.groups.items()}


def random_channels(channels: int, width: int, conv_groups: int, generator: torch.Generator) -> list[int]:
    """``width`` random channels (the same local positions in every conv group)."""
    per = channels // conv_groups
    local = torch.randperm(per, generator=generator)[: width // conv_groups].tolist()
    return expand_local(local, channels, conv_groups)


# Each takes ``depths``: keep these stage depths (e.g. a searched architecture's) instead of full depth.
@register_baseline("uniform", takes_depths=True)
def uniform(supernet: Supernet, model: nn.Module, metric: str, ratio: float, seed: int,
            depths: Mapping[str, int] | None = None, **_: Any) -> Arch:
    """Uniform widths, each group keeping its first channels (the prefix TAS's widths keep)."""
    widths, r = uniform_widths(supernet, metric, ratio, depths)
    return supernet.make_arch(widths, depths or full_depths(supernet), method="uniform",
                              meta={"uniform_ratio": r})


@register_baseline("l1", takes_depths=True)
def l1(supernet: Supernet, model: nn.Module, metric: str, ratio: float, seed: int,
       depths: Mapping[str, int] | None = None, **_: Any) -> Arch:
    """Li et al. 2017: uniform widths, each group keeping the channels of largest producer-filter L1 norm."""
    widths, r = uniform_widths(supernet, metric, ratio, depths)
    return supernet.make_arch(widths, depths or full_depths(supernet), indices=l1_indices(model, supernet, widths),
                              method="l1", meta={"uniform_ratio": r})


@register_baseline("random", takes_depths=True)
def random(supernet: Supernet, model: nn.Module, metric: str, ratio: float, seed: int,
           depths: Mapping[str, int] | None = None, **_: Any) -> Arch:
    """Uniform widths, random kept channels (seeded): the floor a selection rule must beat."""
    widths, r = uniform_widths(supernet, metric, ratio, depths)
    gen = torch.Generator().manual_seed(seed)
    indices = {n: random_channels(g.channels, widths[n], g.conv_groups, gen) for n, g in supernet.graph.groups.items()}
    return supernet.make_arch(widths, depths or full_depths(supernet), indices=indices, method="random",
                              meta={"uniform_ratio": r})
