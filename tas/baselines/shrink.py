"""Global, budgeted channel removal on the search space: the shared core of ``synflow`` and ``plasticity``.

A :class:`WidthState` holds a width-only pruning in progress: per group the kept channels, its
position on its candidate list and the exact cost of the widths at full depth. :meth:`WidthState.shrink_to`
removes channels until the cost is within a target: each removal moves the group whose next
removable unit has the lowest mean channel score one candidate down (the unit is its
``w_j − w_{j−1}`` lowest-scoring kept channels, the same local positions in every conv group of a
grouped conv, so the slim conv stays grouped). Every width stays one of the group's candidates,
and the cost lands below the target by less than one candidate step of one group (the cost before
the last removal was above it).
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from ..errors import TasError
from ..nas.supernet import Supernet

__all__ = ["WidthState", "expand_local"]


def expand_local(local: list[int], channels: int, conv_groups: int) -> list[int]:
    """Local positions → the channels at those positions in every conv group (sorted)."""
    per = channels // conv_groups
    return sorted(g * per + p for g in range(conv_groups) for p in local)


class WidthState:
    """Kept channels, candidate levels, widths and exact cost of a width-only pruning of ``supernet``.

    Starts at full width and depth. ``kept[n]`` is a bool tensor over group ``n``'s channels;
    ``widths[n] == kept[n].sum()`` is always ``n``'s candidate at ``level[n]``.
    """

    def __init__(self, supernet: Supernet, metric: str) -> None:
        self.supernet, self.metric = supernet, metric
        self.groups = supernet.groups()
        self.kept = {n: torch.ones(g.channels, dtype=torch.bool) for n, g in self.groups.items()}
        self.level = {n: len(g.widths) - 1 for n, g in self.groups.items()}
        self.widths = {n: g.widths[-1] for n, g in self.groups.items()}
        self.depths = {n: s.num_blocks for n, s in supernet.graph.stages.items()}
        self.order = {n: i for i, n in enumerate(self.groups)}
        self.cost = supernet.cost.exact(metric, self.widths, self.depths)

    @property
    def ratio(self) -> float:
        return self.cost / self.supernet.full[self.metric]

    def lowest_unit(self, scores: Mapping[str, torch.Tensor]) -> tuple[str, list[int]] | None:
        """The group whose next removable unit has the lowest mean channel score, and that unit's
        local positions; None when every group is at its narrowest candidate.

        Within a group, lower scores go first and at a tie the higher index (lower ones are kept);
        between groups, at a tie the group earlier in graph order.
        """
        best = None
        for n, g in self.groups.items():
            j = self.level[n]
            if j == 0:
                continue
            cg, per = g.conv_groups, g.channels // g.conv_groups
            local = scores[n].double().view(cg, per).sum(0).numpy()
            alive = np.flatnonzero(self.kept[n].view(cg, per)[0].numpy())
            ranked = alive[np.lexsort((-alive, local[alive]))]
            unit = ranked[: (g.widths[j] - g.widths[j - 1]) // cg]
            key = (float(local[unit].sum()) / (len(unit) * cg), self.order[n])
            if best is None or key < best[0]:
                best = (key, n, unit.tolist())
        return None if best is None else (best[1], best[2])

    def remove(self, group: str, local: list[int]) -> list[int]:
        """Drop ``group``'s channels at ``local`` positions, one candidate down; the channels removed."""
        g = self.groups[group]
        channels = expand_local(local, g.channels, g.conv_groups)
        self.kept[group][channels] = False
        self.level[group] -= 1
        self.widths[group] = g.widths[self.level[group]]
        self.cost = self.supernet.cost.exact(self.metric, self.widths, self.depths)
        return channels

    def shrink_to(self, target: float, scores: Mapping[str, torch.Tensor],
                  on_remove: Callable[[str, list[int]], None] | None = None) -> None:
        """Remove lowest-scoring units (module docstring) until ``cost <= target``.

        ``on_remove(group, channels)`` is called after each removal (to mask a network).

        Raises:
            TasError: every group is at its narrowest and the cost is still above ``target``.
        """
        while self.cost > target:
            pick = self.lowest_unit(scores)
            if pick is None:
                raise TasError(f"cannot reach {self.metric} {target:.0f}: every group is at its narrowest "
                               f"candidate ({self.metric} ratio {self.ratio:.3f})")
            channels = self.remove(*pick)
            if on_remove is not None:
                on_remove(pick[0], channels)

    def indices(self) -> dict[str, list[int]]:
        """Kept channel indices per group (for :meth:`~tas.supernet.Supernet.make_arch`)."""
        return {n: k.nonzero().flatten().tolist() for n, k in self.kept.items()}
