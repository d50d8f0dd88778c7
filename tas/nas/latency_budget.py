"""The latency side of a search: the table every rank shares, and landing the final architecture on
its measured target (:func:`land_latency`).

A latency table predicts a network from its layers, and the search then picks, of all the
architectures near the budget, one the table finds cheap: where the table under-predicts, the
search seeks out exactly those networks (the optimizer's curse). Measured here on mobilenetv2_100
at 128 px, batch 1, ONNX Runtime with 2 threads: the calibration fits random networks of the space
within a few per cent, yet the two searched networks measured 15 and 22 % over their predicted
ratios. So at the end of a latency search the slim network is exported and timed beside the
original, and when the measured ratio misses the target the decode runs again against a target
corrected by the miss, from the same learned distributions (:func:`land_latency`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .. import distributed
from ..deploy import latency
from ..prune.materialize import materialize
from .config import SearchConfig
from .supernet import Supernet

__all__ = ["FEEDBACK_TOLERANCE", "budget_ratio", "land_latency", "landed_within", "measured_landing",
           "shared_latency_table"]

#: a measured ratio within this fraction of the target ends the feedback (a pair of timings of a
#: 2 ms network spreads by 1-2 % here; the acceptance for a latency target is 5 %)
FEEDBACK_TOLERANCE = 0.025

Arch = tuple[dict[str, int], dict[str, int]]


def budget_ratio(arch: Any, metric: str, table: Any) -> float:
    """The architecture's cost as a fraction of the original, in the search's budget metric."""
    if metric == "latency":
        return table.exact_arch(arch) / table.full()
    return getattr(arch, f"{metric}_ratio")


def shared_latency_table(supernet: Supernet, cfg: SearchConfig) -> Any:
    """The supernet's latency table (cached or measured), measured by rank 0 alone (ranks timing
    side by side would disturb each other) and sent to the others."""
    main = distributed.is_main()
    table = latency.load_or_build(supernet, runtime=cfg.runtime, batch=cfg.latency_batch,
                                  threads=cfg.latency_threads or torch.get_num_threads(),
                                  progress=cfg.progress) if main else None
    if distributed.is_active():
        table = latency.LatencyTable.from_dict(distributed.broadcast_object(table.to_dict() if main else None))
    return table


def land_latency(decode: Callable[[float], tuple[dict[str, int], dict[str, int], int]],
                 measure: Callable[[dict[str, int], dict[str, int]], float | Sequence[float]], ratio: float,
                 rounds: int, tolerance: float = FEEDBACK_TOLERANCE
                 ) -> tuple[dict[str, int], dict[str, int], int, list[dict]]:
    """Decode, measure, and decode again against a corrected target until the measured ratio lands.

    ``decode(scale)`` returns ``(widths, depths, moves)`` decoded against the budget's target times
    ``scale``; ``measure(widths, depths)`` the network's measured latency ratio to the original, or
    one per timing (cold and steady state: an architecture must meet the target in each). The
    miss is the largest ``|measured / ratio − 1|`` over the timings. Starting at scale 1, while the
    miss is more than ``tolerance``, the scale is multiplied by ``ratio / m`` (``m`` the timings'
    mean) and the decode runs again, at most ``rounds`` times; it stops early when a decode returns
    an architecture already measured (the space's grid cannot move it closer). Of the architectures
    measured, the one with the least miss is returned, over the target or under it alike (a
    latency target is one to hit: preferring the side under it kept, in the benchmark, a 6.8 % miss
    under 0.5 over a 2.8 % one above it). With it come its decode's
    ``moves`` and one record per round: ``{"round", "scale", "measured_ratio" (the mean),
    "measured_ratios", "moves", "widths", "depths"}``.
    """
    scale = 1.0
    widths, depths, moves = decode(scale)
    history: list[dict] = []
    seen: set[tuple] = set()
    best: tuple[float, Arch, int] | None = None
    for r in range(rounds + 1):
        seen.add(_key(widths, depths))
        got = measure(widths, depths)
        ratios = [float(x) for x in (got if isinstance(got, (list, tuple)) else [got])]
        measured = sum(ratios) / len(ratios)
        history.append({"round": r, "scale": scale, "measured_ratio": measured, "measured_ratios": ratios,
                        "moves": moves, "widths": dict(widths), "depths": dict(depths)})
        miss = max(abs(x / ratio - 1) for x in ratios)
        if best is None or miss < best[0]:
            best = (miss, (widths, depths), moves)
        if miss <= tolerance or r == rounds:
            break
        scale *= ratio / measured
        widths, depths, moves = decode(scale)
        if _key(widths, depths) in seen:
            break
    assert best is not None
    return (*best[1], best[2], history)


def measured_landing(stepper: Any, teacher: torch.nn.Module, cfg: SearchConfig, caps: dict[str, int] | None = None
                     ) -> tuple[dict[str, int], dict[str, int], int, list[dict]]:
    """:func:`land_latency` for a search: ``stepper`` (its :class:`~tas.nas.arch_step.ArchStepper`)
    decodes, each candidate is materialised and timed beside ``teacher`` with ONNX Runtime, cold and
    in the steady state (the budget blends the table's predictions of the two), at most
    ``cfg.latency_feedback`` rounds. Rank 0 measures; every rank gets its architecture."""
    out = None
    if distributed.is_main():
        net = stepper.supernet
        threads = cfg.latency_threads or torch.get_num_threads()
        warm = int(stepper.latency.meta.get("warm_calls", 0))

        def measure(widths: dict[str, int], depths: dict[str, int]) -> tuple[float, float]:
            slim = materialize(net, net.make_arch(widths, depths)).cpu()
            full, ms, steady_full, steady = latency.measure_pair(slim, teacher, net.input_size, cfg.latency_batch,
                                                                 threads, warm)
            return ms / full, steady / steady_full

        out = land_latency(lambda scale: stepper.decode(caps=caps, target=scale * stepper.target), measure,
                           cfg.ratio, cfg.latency_feedback)
    return distributed.broadcast_object(out) if distributed.is_active() else out


def landed_within(history: Sequence[dict], widths: dict[str, int], depths: dict[str, int], cfg: SearchConfig) -> bool:
    """Whether the architecture :func:`land_latency` chose met the budget as it was measured (every
    timing in ``[band bottom, target·(1 + FEEDBACK_TOLERANCE)]``), not as the table predicted it."""
    chosen = next(h for h in history if h["widths"] == widths and h["depths"] == depths)
    return all(cfg.band[0] <= r <= cfg.ratio * (1 + FEEDBACK_TOLERANCE) for r in chosen["measured_ratios"])


def _key(widths: dict[str, int], depths: dict[str, int]) -> tuple:
    return tuple(sorted(widths.items())), tuple(sorted(depths.items()))
