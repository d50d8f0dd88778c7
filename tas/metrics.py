"""Metrics beyond top-1 for comparing a pruned network with its original.

:func:`recall_distortion` measures whether pruning hurts the classes the original already found
hard more than the others, the *intensification* effect of "Recall Distortion in Neural Network
Pruning and the Undecayed Pruning Algorithm" (Good et al., NeurIPS 2022; after Hooker et al.,
"What do compressed deep neural networks forget?").
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["recall_distortion"]


def _labels(x: Any, name: str) -> np.ndarray:
    """Class ids from a sequence, array or tensor of ids, or from ``N x K`` logits (argmax)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 2:
        a = a.argmax(1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be class ids (N,) or logits (N, K), got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer class ids")
        a = a.astype(np.int64)
    return a.astype(np.int64)


def recall_distortion(teacher_preds: Sequence[int] | Any, slim_preds: Sequence[int] | Any,
                      labels: Sequence[int] | Any, num_classes: int | None = None) -> dict[str, Any]:
    """Per-class recall of an original (teacher) and a pruned (slim) network, and the intensification test.

    Definitions (recalls and accuracies in percent; ``c`` ranges over the classes present in
    ``labels``, i.e. with at least one sample):

    * recall ``R_c = 100 · #{i : y_i = c and ŷ_i = c} / #{i : y_i = c}`` for each network;
    * accuracy ``A = 100 · #{i : ŷ_i = y_i} / N`` for each network;
    * relative change ``Δ_c = R_c(slim) / R_c(teacher) − 1`` (``None`` where ``R_c(teacher) = 0``:
      such a class cannot lose recall and is left out of the means);
    * *below* = classes with ``R_c(teacher) < A(teacher)``, *above* = the others
      (``R_c(teacher) ≥ A(teacher)``);
    * ``mean_change_below`` / ``mean_change_above``: the unweighted mean of ``Δ_c`` over each set
      (``None`` for an empty set);
    * ``intensification = mean_change_above − mean_change_below``: how much more, relatively, the
      teacher's hard classes lost;
    * ``intensified = intensification > 0``: pruning intensified the existing recall disparity (the
      effect the paper reports); ``False`` when either set is empty.

    Also returned for each class: ``normalized_change`` ``= (R_c(slim)/R_c(teacher)) / (A(slim)/A(teacher))``,
    above 1 when the class kept more of its recall than the network kept of its accuracy.

    Args:
        teacher_preds, slim_preds: predicted class ids (or logits, argmax taken) per sample.
        labels: true class ids.
        num_classes: number of classes (default: ``max id + 1`` over labels and predictions).

    Returns:
        ``classes``, ``teacher_recall``, ``slim_recall``, ``relative_change``, ``normalized_change``
        (lists aligned with ``classes``), ``teacher_accuracy``, ``slim_accuracy``, ``below``,
        ``above`` (class ids), ``mean_change_below``, ``mean_change_above``, ``intensification``,
        ``intensified``, ``num_samples``.
    """
    t, s, y = _labels(teacher_preds, "teacher_preds"), _labels(slim_preds, "slim_preds"), _labels(labels, "labels")
    if not (len(t) == len(s) == len(y)):
        raise ValueError(f"teacher_preds, slim_preds and labels differ in length ({len(t)}, {len(s)}, {len(y)})")
    if len(y) == 0:
        raise ValueError("recall_distortion needs at least one sample")
    k = num_classes if num_classes is not None else int(max(y.max(), t.max(), s.max())) + 1
    total = np.bincount(y, minlength=k)[:k]
    classes = [int(c) for c in np.flatnonzero(total)]

    def recalls(p: np.ndarray) -> list[float]:
        hit = np.bincount(y[p == y], minlength=k)[:k]
        return [100.0 * hit[c] / total[c] for c in classes]

    rt, rs = recalls(t), recalls(s)
    at, as_ = 100.0 * float(np.mean(t == y)), 100.0 * float(np.mean(s == y))
    change = [None if a == 0 else b / a - 1.0 for a, b in zip(rt, rs)]
    acc_ratio = as_ / at if at > 0 else None
    normalized = [None if d is None or not acc_ratio else (d + 1.0) / acc_ratio for d in change]
    below = [c for c, r in zip(classes, rt) if r < at]
    above = [c for c, r in zip(classes, rt) if r >= at]

    def mean_change(which: list[int]) -> float | None:
        vals = [d for c, d in zip(classes, change) if c in which and d is not None]
        return float(np.mean(vals)) if vals else None

    mb, ma = mean_change(below), mean_change(above)
    gap = None if mb is None or ma is None else ma - mb
    return {"classes": classes, "teacher_recall": rt, "slim_recall": rs, "relative_change": change,
            "normalized_change": normalized, "teacher_accuracy": at, "slim_accuracy": as_,
            "below": below, "above": above, "mean_change_below": mb, "mean_change_above": ma,
            "intensification": gap, "intensified": bool(gap is not None and gap > 0), "num_samples": int(len(y))}
