"""Heat-maps for TensorBoard's Images tab: labelled probability figures (matplotlib) and plain images.

One row per channel group (or stage), one column per candidate from the narrowest (shallowest)
up; each cell names its candidate and shows its probability. The argmax of every row is outlined,
the decoded final choice (when given) is starred, and cells past a row's last candidate are left
blank. The figure grows by :data:`ROW_INCHES` per row, so a ResNet-50's ~40 groups stay readable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["ProbRow", "probability_figure", "heatmap_image", "padded_rows", "ROW_INCHES", "DPI"]

#: height of one row and width of one column, in inches; the figure is sized from them
ROW_INCHES = 0.34
COL_INCHES = 0.78
#: resolution the figure is drawn at (TensorBoard stores it as a PNG of this many pixels per inch)
DPI = 100
_TOP, _BOTTOM, _COLORBAR = 0.85, 0.55, 0.95  # inches: title, x label, colour bar and its label

ARGMAX_COLOR = "#e8175d"
DECODED_COLOR = "#ff8c00"


@dataclass
class ProbRow:
    """One row of a heat-map: a group or stage, its candidates (ascending) and their probabilities.

    ``chosen`` is the candidate the final decode kept (None before the search ends).
    """

    name: str
    candidates: Sequence[int]
    probs: Sequence[float]
    chosen: int | None = None


def probability_figure(rows: Sequence[ProbRow], title: str, candidate: str = "width"):
    """A :class:`matplotlib.figure.Figure` of ``rows`` (top to bottom in the given order).

    ``candidate`` names what the columns count (``width`` or ``depth``); it labels the x axis and
    prefixes each cell's candidate value. The colour scale is fixed to [0, 1], so figures of
    different epochs compare by colour.
    """
    from matplotlib import colormaps  # why: matplotlib is slow to import; only the figures need it
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n = len(rows)
    m = max((len(r.candidates) for r in rows), default=1)
    values = np.full((max(n, 1), m), np.nan)
    for i, r in enumerate(rows):
        values[i, : len(r.probs)] = [float(p) for p in r.probs]
    label_in = 0.35 + 0.075 * max((len(r.name) for r in rows), default=4)
    width = max(label_in + m * COL_INCHES + _COLORBAR, 0.4 + 0.085 * len(title))  # the title fits
    height = _TOP + _BOTTOM + max(n, 1) * ROW_INCHES
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((label_in / width, _BOTTOM / height, m * COL_INCHES / width, max(n, 1) * ROW_INCHES / height))
    cax = fig.add_axes(((label_in + m * COL_INCHES + 0.15) / width, _BOTTOM / height, 0.15 / width,
                        max(n, 1) * ROW_INCHES / height))
    cmap = colormaps["viridis"].with_extremes(bad="white")  # a missing candidate is a blank cell
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                      interpolation="nearest")
    fig.colorbar(image, cax=cax).set_label("probability", fontsize=8)
    cax.tick_params(labelsize=7)

    for i, r in enumerate(rows):
        best = max(range(len(r.probs)), key=lambda j: float(r.probs[j])) if len(r.probs) else None
        for j, (c, p) in enumerate(zip(r.candidates, r.probs)):
            p = float(p)
            ax.text(j, i, f"{c}\n{p:.2f}", ha="center", va="center", fontsize=7, linespacing=0.95,
                    color="black" if p > 0.55 else "white")
            if j == best:
                ax.add_patch(Rectangle((j - 0.46, i - 0.44), 0.92, 0.88, fill=False, lw=2.0,
                                       edgecolor=ARGMAX_COLOR, label="argmax"))
            if r.chosen is not None and c == r.chosen:
                ax.plot(j - 0.36, i - 0.22, marker="*", ms=9, mfc=DECODED_COLOR, mec="black", mew=0.6,
                        label="decoded")
    ax.set_yticks(range(n), [r.name for r in rows], fontsize=8)
    ax.set_xticks(range(m), [f"{j + 1}" for j in range(m)], fontsize=7)
    ax.set_xlabel(f"candidate {candidate}s, narrowest first (cell: {candidate} / probability)"
                  if candidate == "width" else
                  f"candidate {candidate}s, shallowest first (cell: {candidate} / probability)", fontsize=8)
    ax.set_xticks(np.arange(-0.5, m), minor=True)
    ax.set_yticks(np.arange(-0.5, max(n, 1)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    decoded = any(r.chosen is not None for r in rows)
    fig.suptitle(title, fontsize=10, x=0.02, ha="left", y=1 - 0.12 / height, va="top")
    fig.text(0.02, 1 - 0.42 / height, "□ box: argmax", fontsize=8, ha="left", va="top", color=ARGMAX_COLOR,
             fontweight="bold")
    if decoded:
        fig.text(0.02 + 1.3 / width, 1 - 0.42 / height, "★ star: decoded final choice (arch.json)", fontsize=8,
                 ha="left", va="top", color="#b35900", fontweight="bold")
    return fig


# A short viridis-like ramp, so the image needs no plotting library.
_RAMP = torch.tensor([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                     dtype=torch.float32) / 255.0


def heatmap_image(values: torch.Tensor, cell: tuple[int, int] = (12, 24)) -> torch.Tensor:
    """A (3, H, W) float image of a 2-d matrix in [0, 1]: one ``cell``-sized patch per entry.

    NaN entries (a row with fewer candidates than the widest) are drawn black.
    """
    v = values.detach().float().cpu()
    mask = torch.isnan(v)
    x = v.nan_to_num(0.0).clamp(0, 1) * (len(_RAMP) - 1)
    lo = x.floor().long().clamp(max=len(_RAMP) - 2)
    frac = (x - lo).unsqueeze(-1)
    rgb = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac
    rgb[mask] = 0.0
    img = rgb.permute(2, 0, 1)
    return img.repeat_interleave(cell[0], dim=1).repeat_interleave(cell[1], dim=2)


def padded_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rows of different lengths as one matrix, NaN-padded on the right (drawn black by :func:`heatmap_image`)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), float("nan"))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r.detach().float().cpu()
    return out
