"""Calibration of a latency table against whole networks.

A table's entries time each layer alone and cold. Inside a network a layer finds its input still
cached from the layer before, and served back to back (the steady state) a network whose weights
fit in the cache reads them from there too: the sum of the entries is off by a factor, a fixed
overhead and a part that grows with the weights read. Scaling the entries to the one whole model
the table times gets the full network right and nothing else. So the build also times a few whole
networks of the search space (the full one, the smallest one and random ones spread between,
:func:`calibration_archs`), in both timings, and fits per timing, by least squares,

    measured ms ≈ overhead + scale × Σ entries (ms) + per_mb × Σ weights read (MB)

over the layers each network keeps (:func:`fit_timing`). Every term is linear in the grids, so the
differentiable expected latency keeps its form (:func:`tas.deploy.latency.table.budget_grids`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

#: the term sets tried; of the fits that are physical (see :func:`fit_timing`) the closest is kept
_TERMS = (("layers", "mb", "overhead"), ("layers", "overhead"), ("mb", "overhead"), ("layers", "mb"), ("layers",))
#: the least share of the biggest network's fitted time its layers' term must make
_MIN_LAYER_SHARE = 0.1
#: the most of the samples' variance (about their mean) a fit may leave unexplained
_MAX_UNEXPLAINED = 0.25


def calibration_archs(supernet: Any, n: int, seed: int = 0) -> list[Any]:
    """The full and the smallest architecture of ``supernet``'s space, and ``n`` random ones spread
    evenly between: the ``i``-th picks, in every group and stage, the candidate near the fraction
    ``(i + ½) / n`` of the way from the narrowest to the widest, give or take one candidate.
    (Independent uniform picks would pile up near the middle of the range.)"""
    gen = torch.Generator().manual_seed(seed)
    archs = [supernet.full_arch(), supernet.smallest_arch()]

    def pick(options: Sequence[int], u: float) -> int:
        jitter = float(torch.rand((), generator=gen)) * 2 - 1
        i = int(round(u * (len(options) - 1) + jitter))
        return int(options[min(max(i, 0), len(options) - 1)])

    for i in range(n):
        u = (i + 0.5) / n
        widths = {g: pick(s.widths, u) for g, s in supernet.groups().items()}
        depths = {st: pick(supernet.stage_depths[st], u) for st in supernet.graph.stages}
        archs.append(supernet.make_arch(widths, depths, method="calibration"))
    return archs


def fit_timing(layers_ms: Sequence[float], mb: Sequence[float], measured_ms: Sequence[float],
               grids: Sequence[np.ndarray], mbs: Sequence[np.ndarray]) -> dict[str, Any] | None:
    """Least-squares ``measured ≈ overhead + scale × layers_ms + per_mb × mb`` over the samples.

    Every term set of :data:`_TERMS` is fitted; of those that are physical the one with the least
    squared error is kept. Physical: ``scale`` >= 0 and ``overhead`` >= 0, every layer's
    calibrated grid (``scale × entry + per_mb × MB``) >= 0 (a negative one would make the budget
    prefer keeping layers), a variable part (the layers' and weights' terms) of at least
    :data:`_MIN_LAYER_SHARE` of the biggest sample's prediction, and residuals that leave less
    than :data:`_MAX_UNEXPLAINED` of the samples' variance unexplained (a fit that is mostly
    constant, or mostly wrong, cannot rank architectures). On a machine whose memory bandwidth
    other jobs share, whole networks were measured here to follow their weights more than their
    layers' cold times (``mb`` + ``overhead`` explained 96 % of the variance, ``layers`` +
    ``overhead`` 85 %). A fit needs more samples than terms. Returns ``{"scale", "per_mb", "overhead", "terms", "residuals"}``
    (residuals: predicted / measured − 1 per sample) or None when no fit is physical.
    """
    x = {"layers": np.asarray(layers_ms, dtype=np.float64), "mb": np.asarray(mb, dtype=np.float64),
         "overhead": np.ones(len(measured_ms))}
    y = np.asarray(measured_ms, dtype=np.float64)
    best, best_sse = None, np.inf
    for terms in _TERMS:
        if len(y) <= len(terms):
            continue
        coef, *_ = np.linalg.lstsq(np.stack([x[t] for t in terms], axis=1), y, rcond=None)
        c = {"layers": 0.0, "mb": 0.0, "overhead": 0.0, **dict(zip(terms, map(float, coef)))}
        pred = c["overhead"] + c["layers"] * x["layers"] + c["mb"] * x["mb"]
        sse = float(((pred - y) ** 2).sum())
        if sse < best_sse and _physical(c, x, y, pred, grids, mbs):
            best, best_sse = {"scale": c["layers"], "per_mb": c["mb"], "overhead": c["overhead"], "terms": list(terms),
                              "residuals": [float(r) for r in pred / y - 1]}, sse
    return best


def _physical(c: Mapping[str, float], x: Mapping[str, np.ndarray], y: np.ndarray, pred: np.ndarray,
              grids: Sequence[np.ndarray], mbs: Sequence[np.ndarray]) -> bool:
    """Whether the coefficients ``c`` make a usable fit (see :func:`fit_timing`)."""
    if c["layers"] < 0 or c["overhead"] < 0:
        return False
    if any((c["layers"] * np.asarray(g) + c["mb"] * m).min() < 0 for g, m in zip(grids, mbs) if np.size(g)):
        return False
    big = int(np.argmax(x["layers"]))
    if c["layers"] * x["layers"][big] + c["mb"] * x["mb"][big] < _MIN_LAYER_SHARE * pred[big]:
        return False
    return bool(((pred - y) ** 2).sum() < _MAX_UNEXPLAINED * ((y - y.mean()) ** 2).sum())


def fit_calibration(samples: Sequence[Mapping[str, Any]], grids: Sequence[np.ndarray], mbs: Sequence[np.ndarray]
                    ) -> dict[str, Any] | None:
    """The calibration of a table from ``samples`` (one per whole network: ``layers_ms``, ``mb``,
    ``cold_ms``, ``steady_ms``): a :func:`fit_timing` per timing, or None when either has none."""
    layers, mb = [s["layers_ms"] for s in samples], [s["mb"] for s in samples]
    fits = {t: fit_timing(layers, mb, [s[f"{t}_ms"] for s in samples], grids, mbs) for t in ("cold", "steady")}
    if any(f is None for f in fits.values()):
        return None
    return {**fits, "blend": 0.5, "samples": [dict(s) for s in samples]}
