"""TensorBoard helpers for inspecting a search: distributions as heat-map images and text."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["heatmap_image", "log_distributions", "log_attention", "create_writer"]

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


def _padded(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), float("nan"))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r.detach().float().cpu()
    return out


def log_distributions(writer, supernet, step: int) -> None:
    """Width and depth distributions of ``supernet`` (histograms per group/stage + one heat-map each).

    Tags: ``width/<group>`` and ``depth/<stage>`` (histograms of the candidate each sample picks,
    weighted by its probability), ``width_probs`` and ``depth_probs`` (images: rows are groups or
    stages in model order, columns candidates from narrowest/shallowest, colour = probability).
    """
    rows = []
    for name, g in supernet.groups().items():
        p = g.probs().detach().cpu()
        rows.append(p)
        if len(g.widths) > 1:
            writer.add_histogram_raw(
                f"width/{name}", min=float(g.widths[0]), max=float(g.widths[-1]), num=1.0,
                sum=float((p * torch.tensor(g.widths, dtype=torch.float32)).sum()),
                sum_squares=float((p * torch.tensor(g.widths, dtype=torch.float32) ** 2).sum()),
                bucket_limits=[float(w) for w in g.widths], bucket_counts=[float(x) for x in p], global_step=step)
    writer.add_image("width_probs", heatmap_image(_padded(rows)), step)
    drows = []
    for name, depths in supernet.stage_depths.items():
        q = supernet.depth_probs(name).detach().cpu()
        drows.append(q)
        if len(depths) > 1:
            writer.add_histogram_raw(
                f"depth/{name}", min=float(depths[0]), max=float(depths[-1]), num=1.0,
                sum=float((q * torch.tensor(depths, dtype=torch.float32)).sum()),
                sum_squares=float((q * torch.tensor(depths, dtype=torch.float32) ** 2).sum()),
                bucket_limits=[float(d) for d in depths], bucket_counts=[float(x) for x in q], global_step=step)
    if drows:
        writer.add_image("depth_probs", heatmap_image(_padded(drows)), step)



def log_attention(writer, supernet, step: int) -> None:
    """SA++ state: ``attention/<group>`` histograms and the ``sapp_mask`` image (groups × blocks).

    In the mask image a kept block is drawn by its attention (scaled by the group's maximum) and a
    masked block black; groups with fewer blocks are padded black.
    """
    rows = []
    for name, g in supernet.groups().items():
        if g.attn_logits is None:
            continue
        a = g.attention().detach().cpu()
        writer.add_histogram(f"attention/{name}", a, step)
        rows.append(torch.where(g.mask.cpu(), a / a.max(), torch.zeros_like(a)))
    if rows:
        writer.add_image("sapp_mask", heatmap_image(_padded(rows), cell=(12, 6)), step)


class _NullWriter:
    """Stands in for a ``SummaryWriter`` on ranks other than 0: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def create_writer(log_dir: str | os.PathLike, purge_step: int | None = None) -> Any:
    """A TensorBoard ``SummaryWriter`` on rank 0 (creating ``log_dir``), a no-op writer elsewhere."""
    from torch.utils.tensorboard import SummaryWriter

    from . import distributed

    if not distributed.is_main():
        return _NullWriter()
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
