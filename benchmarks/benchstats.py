"""Small statistics for the benchmarks: paired differences with a t confidence interval, and
interpolation along a measured curve. Standard library only (scipy is not a dependency)."""
from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence

__all__ = ["T975", "t_quantile_975", "paired_differences", "interp_at"]

#: two-sided 95 % quantiles of Student's t, t_{0.975, df}, for df = 1..30 (standard tables)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table for df ≤ 30, beyond it the Cornish–Fisher expansion around the normal
    quantile (its error there is below 1e-4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = statistics.NormalDist().inv_cdf(0.975)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_differences(a: Mapping[int, float], b: Mapping[int, float]) -> dict | None:
    """``a − b`` per shared key (seed): mean, sample sd and the 95 % t interval of the mean.

    Only keys present in both count (a seed one side lacks is dropped, never imputed). Returns
    None without a shared key; with one, the interval is unknown (``lo``/``hi`` None).
    """
    keys = sorted(set(a) & set(b))
    if not keys:
        return None
    diffs = [a[k] - b[k] for k in keys]
    n, mean = len(diffs), statistics.fmean(diffs)
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "half_width": None, "lo": None, "hi": None, "diffs": diffs}
    sd = statistics.stdev(diffs)
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "half_width": half, "lo": mean - half, "hi": mean + half,
            "diffs": diffs}


def interp_at(points: Sequence[Sequence[float]], x: float) -> float | None:
    """The second coordinate at ``x`` on the piecewise-linear curve through ``points`` (``(x, y, ...)``,
    sorted by x here); None outside the curve's x range (never extrapolated)."""
    pts = sorted(points, key=lambda p: p[0])
    for (x0, y0, *_), (x1, y1, *_) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if len(pts) == 1 and pts[0][0] == x:
        return pts[0][1]
    return None
