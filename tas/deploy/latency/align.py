"""Latency-aligned candidate widths (``divisor: auto``): a search space's widths filtered by a
:class:`~tas.deploy.latency.table.LatencyTable`, so that no candidate is slower than a wider one."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from .table import LatencyTable

__all__ = ["aligned_candidates"]


def aligned_candidates(table: LatencyTable, candidates: Mapping[str, Sequence[int]] | None = None,
                       tolerance: float = 0.0) -> dict[str, list[int]]:
    """Per group, the candidate widths that survive latency alignment (``divisor: auto``).

    A width is dropped when a wider candidate of the same group is no slower (its latency, summed
    over the layers the group touches with every other group at full width, is at most
    ``(1 + tolerance)`` times this one's): it would cost as much for fewer channels. What remains
    gets strictly faster as it gets narrower; the full width is always kept.

    Args:
        candidates: the widths to filter per group (default: the table's grid).
        tolerance: a wider width within this fraction of a narrower one's latency also drops it.
    """
    out: dict[str, list[int]] = {}
    for n, g in table.groups.items():
        ws = sorted(int(w) for w in (candidates[n] if candidates is not None and n in candidates else g["widths"]))
        lat = [table.group_latency(n, w) for w in ws]
        keep, best = [], math.inf  # best: the fastest latency among wider candidates
        for w, t in zip(reversed(ws), reversed(lat)):
            if not best <= t * (1 + tolerance):
                keep.append(w)
            best = min(best, t)
        out[n] = sorted(keep)
    return out
