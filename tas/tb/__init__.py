"""TensorBoard records of tas runs, and the writer every stage uses.

- :mod:`tas.tb.figures`: labelled probability heat-maps (matplotlib figures);
- :mod:`tas.tb.search`: what a search logs per epoch and for its decoded architecture;
- :mod:`tas.tb.runs`: custom-scalars layouts, the HParams session, the model graph.

``docs/tensorboard.md`` shows each tab on a real run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["heatmap_image", "log_distributions", "log_attention", "log_search_epoch", "log_search_end",
           "arch_markdown", "log_session", "log_graph", "create_writer"]

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


class _NullWriter:
    """Stands in for a ``SummaryWriter`` on ranks other than 0: every call does nothing."""

    file_writer = None  # what writes raw summaries (HParams, graphs) checks for this

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def create_writer(log_dir: str | os.PathLike, purge_step: int | None = None) -> Any:
    """A TensorBoard ``SummaryWriter`` on rank 0 (creating ``log_dir``), a no-op writer elsewhere."""
    from torch.utils.tensorboard import SummaryWriter

    from .. import distributed

    if not distributed.is_main():
        return _NullWriter()
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


from .runs import log_graph, log_session  # noqa: E402  (they use nothing above; kept after for reading order)
from .search import arch_markdown, log_attention, log_distributions, log_search_end, log_search_epoch  # noqa: E402
