"""The search loop's bookkeeping: the output check before a search starts (:func:`check_output`), the
counters its resumable state saves (:class:`Progress`), the architecture steps due per weight step
(:func:`arch_quota`), the cycled val batches (:func:`cycle_batches`) and the weight step's learning-rate
schedule (:func:`lr_factor`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import CheckpointError, TasError
from ..io.checkpoint import has_state
from ..io.rundir import is_finished_run
from .config import SearchConfig

__all__ = ["Progress", "arch_quota", "check_output", "cycle_batches", "lr_factor"]


def check_output(cfg: SearchConfig) -> Path:
    """``cfg.output``, checked against ``--resume`` / ``--overwrite`` before anything is read or written."""
    out = Path(cfg.output)
    if cfg.resume and not has_state(out):
        raise CheckpointError(f"--resume: no resumable state in {out}")
    if not cfg.resume and not cfg.overwrite and (is_finished_run(out) or has_state(out)):
        raise TasError(f"{out} already holds a search; pass --resume, --overwrite or another --output")
    return out


def arch_quota(steps: int, arch_steps: float) -> int:
    """Architecture steps due over the first ``steps`` weight steps of an epoch at ``arch_steps``
    per weight step: ``floor(steps · arch_steps)``. Step ``i`` takes ``quota(i + 1) − quota(i)`` of
    them (2: two each; 0.5: one after every second), so a resumed epoch knows how many val
    batches the steps before it used."""
    return math.floor(steps * arch_steps + 1e-9)


def cycle_batches(batches: Iterable) -> Iterator:
    """``batches`` over and over (a plain iterable loader, which skip_batches cannot cycle, too)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


def lr_factor(total_steps: int) -> Callable[[int], float]:
    """The weight step's cosine schedule over ``total_steps`` steps, as a ``LambdaLR`` factor of step ``s``."""
    return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))


@dataclass
class Progress:
    """The loop's counters: what the resumable state saves beside the weights and optimisers."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps taken in all
    in_epoch: int = 0  # steps taken in the current epoch (resuming mid-epoch)
    wall: float = 0.0
    skipped: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: Any = None  # the global RNG to restore once the resumed epoch's batch order is fixed
