"""TensorBoard records of tas runs, and the writer every stage uses.

- :mod:`tas.tb.figures`: labelled probability heat-maps (matplotlib figures) and plain heat-map images;
- :mod:`tas.tb.search`: what a search logs per epoch and for its decoded architecture;
- :mod:`tas.tb.runs`: custom-scalars layouts, the HParams session, the model graph.

``docs/tensorboard.md`` shows each tab on a real run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import distributed
from .figures import heatmap_image
from .runs import log_graph, log_session
from .search import arch_markdown, log_attention, log_distributions, log_search_end, log_search_epoch

__all__ = ["heatmap_image", "log_distributions", "log_attention", "log_search_epoch", "log_search_end",
           "arch_markdown", "log_session", "log_graph", "create_writer"]

class _NullWriter:
    """Stands in for a ``SummaryWriter`` on ranks other than 0: every call does nothing."""

    file_writer = None  # what writes raw summaries (HParams, graphs) checks for this

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def create_writer(log_dir: str | os.PathLike, purge_step: int | None = None) -> Any:
    """A TensorBoard ``SummaryWriter`` on rank 0 (creating ``log_dir``), a no-op writer elsewhere."""
    from torch.utils.tensorboard import SummaryWriter  # why: imports tensorboard (slow); only runs that log need it

    if not distributed.is_main():
        return _NullWriter()
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
