"""What a search runs on and what it returns: :class:`SearchData`, :class:`SearchResult`, and
:func:`summary_rows`, the summary table of a result that :meth:`~tas.nas.searcher.Searcher.report` prints."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .config import SearchConfig
from .supernet import Supernet

__all__ = ["SearchData", "SearchResult", "summary_rows"]


@dataclass
class SearchData:
    """What a search runs on: three loaders of ``(images, labels)`` batches and how to describe them.

    Attributes:
        train: batches for the weight step.
        val: batches for the architecture step (cycled to ``train``'s length).
        test: batches the derived architecture is evaluated on after every epoch and at the end.
        input_size: ``(C, H, W)`` of one image; the costs are counted at it.
        name: the data's name, recorded in ``arch.json`` and ``config.json``.
        info: a :class:`~tas.data.DatasetInfo` whose normalisation ``config.json`` records, when known.
    """

    train: Iterable
    val: Iterable
    test: Iterable
    input_size: tuple[int, int, int]
    name: str = "custom"
    info: Any = None


@dataclass
class SearchResult:
    """What a search returns (:func:`tas.search`, :meth:`Searcher.run`).

    Attributes:
        arch: the final architecture (within the budget unless ``metrics["within_tolerance"]`` says not).
        slim: its dense network, weights from the supernet (``tas.distill`` trains it further).
        history: one entry per epoch: the derived architecture's ratios, widths, depths, test top-1, τ.
        metrics: what ``metrics.json`` holds (``top1_hard_mode``, ``flops``, ``params``, their ratios, ...).
        supernet: the trained supernet (weights and architecture logits).
        run_dir: the run directory written, or ``None``.
    """

    arch: Any
    slim: torch.nn.Module
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    supernet: Supernet
    run_dir: Path | None = None


def summary_rows(cfg: SearchConfig, result: SearchResult, out: Path | None) -> list[list[str]]:
    """The rows ``(what, original, result)`` of ``result``'s summary table: costs and their ratios, the
    target and whether it was met, latency (latency searches), the decode, top-1, wall time, ``arch.json``."""
    arch, m = result.arch, result.metrics
    latency_rows = []
    if cfg.metric == "latency":
        latency_rows = [["latency (ms, predicted / measured)",
                    f"{m['predicted_full_latency_ms']:.3f} / {m['full_latency_ms']:.3f}",
                    f"{m['predicted_latency_ms']:.3f} / {m['measured_latency_ms']:.3f} "
                    f"(ratio {m['measured_latency_ratio']:.3f}, predicted {m['predicted_latency_ratio']:.3f}; "
                    f"error {m['prediction_error']:+.1%} in ms, {m['ratio_prediction_error']:+.1%} as a ratio)"],
                   ["latency, steady state (ms)", f"{m['steady_full_latency_ms']:.3f}",
                    f"{m['steady_latency_ms']:.3f} (ratio {m['steady_latency_ratio']:.3f}"
                    + (f", predicted {m['predicted_steady_latency_ratio']:.3f})"
                       if "predicted_steady_latency_ratio" in m else ")")]]
        if "latency_feedback" in m:
            latency_rows.append(["latency feedback (measured ratio per decode)", "",
                                 " -> ".join(f"{h['measured_ratio']:.3f}" for h in m["latency_feedback"])
                                 + f" ({m['latency_feedback_rounds']} correction(s) of the table's target)"])
    return [
        ["FLOPs (MACs)", f"{arch.full_flops:,}", f"{arch.flops:,} ({arch.flops_ratio:.3f})"],
        ["params", f"{arch.full_params:,}", f"{arch.params:,} ({arch.params_ratio:.3f})"],
        [f"target {cfg.metric} ratio", "", f"{cfg.ratio} (band {cfg.band[0]:.3g}-{cfg.ratio}{', filled' if cfg.fill else ''}): "
                                           f"{'met' if m['within_tolerance'] else 'MISSED'}"],
        *latency_rows,
        ["argmax before the decode", "", f"{cfg.metric} ratio {m['pre_decode_ratio']:.3f}; decode moves: "
                                         f"{m['decode_moves']}{'' if cfg.decode else ' (--no-decode)'}"
                                         + (f"; landing steps: {m['landing_steps']}" if cfg.landing_steps else "")],
        ["hard-mode test top-1", "", f"{m['top1_hard_mode']:.2f}%"],
        ["wall time", "", f"{m['wall_time_s']:.1f} s"],
        *([["arch", "", str(out / "arch.json")]] if out is not None else []),
    ]
