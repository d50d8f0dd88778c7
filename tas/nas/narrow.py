"""Narrowing a search space before the search: which stages search depth, and which candidate widths stay.

Each step takes the supernet built from the space so far and a ``build`` callable (a space -> its
supernet, seeded alike every time), and returns the supernet of the narrowed space, or the same one
when nothing changes. :class:`~tas.nas.searcher.Searcher` runs them in ``prepare``, in this order.
Where a step's choice depends on measurements (a latency table, calibration batches), the search saves
it in its resumable state and passes it back as ``saved``, so a resumed search rebuilds the same supernet.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch

from ..deploy import latency
from ..prune.limits import estimate_limits
from .space import SearchSpace
from .supernet import Supernet

__all__ = ["choose_depth", "align_widths", "bound_widths"]

Build = Callable[[SearchSpace], Supernet]
Widths = dict[str, list[int]]


def choose_depth(net: Supernet, build: Build, mode: str, metric: str, ratio: float) -> Supernet:
    """``--search-depth``: ``on`` searches depth as the space says; ``off`` keeps every block (widths only);
    ``auto`` keeps every block when widths alone reach a FLOPs or params target, and searches depth below
    that and for a latency target, where dropping blocks is what buys the speed. Measured on Fashion-MNIST
    at 0.25 FLOPs, widths only gain cifar_resnet20 0.7 points and lose cifar_mobilenetv2 1.6 (docs/architecture.md,
    *Depth searched*), so ``on`` stays the default."""
    space = net.space
    if mode == "on" or not space.search["depth"] or (mode == "auto" and metric == "latency"):
        return net
    widths_only = build(dataclasses.replace(space, search={**space.search, "depth": False}))
    if mode == "auto":
        smallest = getattr(widths_only.smallest_arch(), metric) / widths_only.full[metric]
        if smallest > ratio:
            print(f"search depth auto: widths alone keep at least {smallest:.3f} of the {metric}, above the "
                  f"{ratio} target: depth is searched")
            return net
        print(f"search depth auto: widths alone reach the {metric} target (down to {smallest:.3f}): every block is kept")
    return widths_only


def _with_widths(net: Supernet, build: Build, widths: Widths, why: str) -> Supernet:
    dropped = sum(len(g.widths) - len(widths[n]) for n, g in net.groups().items())
    print(f"{why} drops {dropped} candidate widths")
    return build(dataclasses.replace(net.space, widths=widths))


def align_widths(net: Supernet, build: Build, table: "latency.LatencyTable", saved: Widths | None = None) -> Supernet:
    """``divisor: auto``: drop the widths the latency table finds no faster than a wider one (``saved``:
    the choice of the search being resumed, which a re-measured table must not change)."""
    widths = saved or latency.aligned_candidates(table, {n: g.widths for n, g in net.groups().items()})
    return _with_widths(net, build, widths, "divisor auto: the latency table (no faster than a wider one)")


def bound_widths(net: Supernet, build: Build, model: torch.nn.Module, batches: Iterable,
                 saved: Widths | None = None) -> Supernet:
    """``--limit-widths``: drop every candidate width below its group's pruning-limit estimate
    (:func:`tas.prune.limits.estimate_limits` on the first two of ``batches``); the full width always stays."""
    groups = net.groups()
    if saved is None:
        limits = estimate_limits(model, [(x, y) for (x, y), _ in zip(batches, range(2))], groups=list(groups))
        saved = {n: [w for w in g.widths if w >= limits[n].width] for n, g in groups.items()}
    return _with_widths(net, build, saved, "limit widths: the pruning-limit estimate (below a group's limit)")
