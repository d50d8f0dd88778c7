"""Task-aware calibration (Tian et al., "Frustratingly Easy Task-aware Pruning for Large Language
Models", 2025) carried to channels, as ``search.py --method task-aware --task-classes …``.

``l1``'s uniform widths; each group keeps the channels of highest task-aware score
(:func:`tas.prune.channel_order.task_aware_scores`: activation-aware importance on general and on task
calibration data, channels split into shared and task-exclusive by their activation norms, the
scores fused). The same score orders channels for TAS with ``--channel-order task``.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..errors import TasError
from ..nas.supernet import Supernet
from ..prune.arch import Arch
from ..prune.channel_order import EXCLUSIVE_THRESHOLD, task_aware_scores
from .base import full_depths, register_baseline
from .magnitude import top_channels, uniform_widths

__all__: list[str] = []


@register_baseline("task-aware", needs_data=True)
def task_aware(supernet: Supernet, model: nn.Module, metric: str, ratio: float, seed: int,
               batches: list | None = None, task_batches: list | None = None,
               threshold: float = EXCLUSIVE_THRESHOLD, **_: Any) -> Arch:
    """Uniform widths, each group keeping its channels of highest task-aware score."""
    if not batches or not task_batches:
        raise TasError("the task-aware baseline needs general and task calibration batches (--task-classes)")
    widths, r = uniform_widths(supernet, metric, ratio)
    scores = task_aware_scores(model, supernet.graph, batches, task_batches, threshold)
    indices = {n: top_channels(scores[n], widths[n], g.conv_groups) for n, g in supernet.graph.groups.items()}
    classes = sorted({int(c) for _, y in task_batches for c in y.tolist()})
    return supernet.make_arch(widths, full_depths(supernet), indices=indices, method="task-aware",
                              meta={"uniform_ratio": r, "task_classes": classes, "threshold": threshold})
