"""The baseline registry and what every baseline shares: the budget checks and :func:`create_baseline_arch`."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch.nn as nn

from ..prune.arch import Arch
from ..errors import TasError
from ..nas.supernet import Supernet, create_supernet

__all__ = ["BASELINES", "DEPTH_SCALING", "FIXED_DEPTHS", "NEEDS_DATA", "TRAINING", "METHODS", "register_baseline", "list_baselines", "create_baseline_arch",
           "max_step_cost", "full_depths", "width_only_minimum"]

#: ``fn(supernet, model, metric, ratio, seed, **options) -> Arch``
BaselineFn = Callable[..., Arch]
BASELINES: dict[str, BaselineFn] = {}
#: the baselines that also choose depths (the others keep every stage's full depth)
DEPTH_SCALING: set[str] = set()
#: the baselines that train (they take ``train_loader``, ``epochs``, ``lr``, ``momentum``,
#: ``weight_decay`` and ``device`` options; their epochs count against a comparison's budget)
TRAINING: set[str] = set()
#: the baselines that read calibration data (``batches``; ``task-aware`` also ``task_batches``)
NEEDS_DATA: set[str] = set()
#: the width-only baselines that take ``depths`` (every stage's depth, e.g. a searched architecture's)
FIXED_DEPTHS: set[str] = set()

#: every ``search.py --method`` (TAS itself and the registered baselines)
METHODS = ("tas", "uniform", "uniform-depth", "l1", "synflow", "random", "random-arch", "plasticity", "undecayed", "task-aware")


def register_baseline(name: str, scales_depth: bool = False, trains: bool = False,
                      needs_data: bool = False, takes_depths: bool = False) -> Callable[[BaselineFn], BaselineFn]:
    """Decorator registering a baseline under ``name``; ``scales_depth``: it chooses depths too, so the
    width-only minimum does not bound its targets; ``trains``: it fine-tunes on training data (:data:`TRAINING`);
    ``needs_data``: it reads calibration batches (:data:`NEEDS_DATA`); ``takes_depths``: it keeps the
    stage depths given as its ``depths`` option instead of full depth (:data:`FIXED_DEPTHS`)."""
    def wrap(fn: BaselineFn) -> BaselineFn:
        BASELINES[name] = fn
        if takes_depths:
            FIXED_DEPTHS.add(name)
        if scales_depth:
            DEPTH_SCALING.add(name)
        if trains:
            TRAINING.add(name)
        if needs_data:
            NEEDS_DATA.add(name)
        return fn
    return wrap


def list_baselines() -> list[str]:
    return sorted(BASELINES)


def full_depths(supernet: Supernet) -> dict[str, int]:
    return {n: s.num_blocks for n, s in supernet.graph.stages.items()}


def width_only_minimum(supernet: Supernet, metric: str, depths: Mapping[str, int] | None = None) -> float:
    """The smallest cost ratio a width-only baseline reaches: every group at its narrowest, at full
    depth (or at ``depths``)."""
    widths = {n: g.widths[0] for n, g in supernet.groups().items()}
    return supernet.cost.exact(metric, widths, depths or full_depths(supernet)) / supernet.full[metric]


def _check_depths(supernet: Supernet, depths: Mapping[str, Any]) -> dict[str, int]:
    """``depths`` as ints, one for every stage and each a candidate depth of it; else a TasError."""
    stages = supernet.graph.stages
    if set(depths) != set(stages):
        raise TasError(f"fixed depths must name every stage ({', '.join(stages)}); got {', '.join(map(str, depths))}")
    bad = [f"{n}={d} (candidates {supernet.stage_depths[n]})" for n, d in depths.items()
           if int(d) not in supernet.stage_depths[n]]
    if bad:
        raise TasError(f"fixed depths outside the space: {', '.join(bad)}")
    return {n: int(d) for n, d in depths.items()}


def max_step_cost(supernet: Supernet, metric: str = "flops") -> int:
    """The largest cost of moving one group one candidate up, measured at full width and depth.

    Costs are sums of products of widths with non-negative coefficients, so a step costs at most
    this anywhere in the space: the bound on how far below its target a baseline may land.
    """
    full = {n: g.channels for n, g in supernet.graph.groups.items()}
    depths = full_depths(supernet)
    worst = 0
    for n, g in supernet.groups().items():
        for a, b in zip(g.widths, g.widths[1:]):
            step = supernet.cost.exact(metric, {**full, n: b}, depths) - supernet.cost.exact(metric, {**full, n: a}, depths)
            worst = max(worst, step)
    return worst


def create_baseline_arch(method: str, model: nn.Module, ratio: float, metric: str = "flops", space: Any = None,
                         input_size: Sequence[int] | None = None, model_name: str | None = None,
                         model_kwargs: Mapping[str, Any] | None = None, seed: int = 0,
                         meta: Mapping[str, Any] | None = None, **options: Any) -> Arch:
    """The architecture baseline ``method`` picks for ``model`` at ``ratio`` of its ``metric``.

    Args:
        method: one of :func:`list_baselines` (``uniform``, ``uniform-depth``, ``l1``, ``synflow``, ``random``,
            ``random-arch``, ``plasticity``, ``undecayed``, ``task-aware``).
        model: the trained network (not modified).
        ratio: fraction of the full ``metric`` to keep, in (0, 1].
        metric: ``flops`` (multiply-accumulates) or ``params``.
        space, input_size, model_name, model_kwargs: as in :func:`tas.create_supernet`.
        seed: seeds the ``random`` and ``random-arch`` baselines (the others are deterministic).
        meta: extra provenance stored in ``arch.meta``.
        options: method options (``synflow``: ``rounds``, ``dtype``; ``uniform-depth``: ``depth_exponent``;
            ``random-arch``: ``sigma``, ``depth_exponent``;
            ``plasticity``: ``train_loader`` (required), ``epochs``, ``lr``, ``momentum``, ``weight_decay``,
            ``device``, ``prune_steps``, ``prune_until``, ``regrowth``;
            ``undecayed``: ``batches``, ``weight_decay``; ``task-aware``: ``batches``, ``task_batches``,
            ``threshold``; ``uniform``, ``l1``, ``random``: ``depths``, every stage's depth to keep, e.g. a
            searched architecture's ``arch.depths``, the widths then scaled uniformly at those depths).

    Raises:
        TasError: an unknown method, or a target below what the space (or a width-only method
        at full depth) can reach, naming the smallest reachable ratio.
    """
    if method not in BASELINES:
        raise TasError(f"unknown baseline {method!r} (one of {', '.join(list_baselines())})")
    if metric not in ("flops", "params"):
        raise TasError(f"metric must be flops or params, got {metric!r}")
    supernet = create_supernet(model, space, input_size=input_size, model_name=model_name, model_kwargs=model_kwargs)
    supernet.check_target(metric, ratio)
    depths = options.get("depths")
    if depths is not None:
        if method not in FIXED_DEPTHS:
            raise TasError(f"the {method} baseline takes no fixed depths (only {', '.join(sorted(FIXED_DEPTHS))})")
        options["depths"] = depths = _check_depths(supernet, depths)
    smallest = width_only_minimum(supernet, metric, depths)
    if method not in DEPTH_SCALING and ratio < smallest:
        raise TasError(f"{metric} target {ratio:.3f} is unreachable for the width-only {method} baseline: every "
                       f"group at its narrowest candidate with {'full' if depths is None else 'the given'} depth "
                       f"keeps {smallest:.3f} of the {metric} (uniform-depth scales depth too)")
    arch = BASELINES[method](supernet, model, metric, float(ratio), int(seed), **options)
    arch.meta.update({"metric": metric, "target_ratio": float(ratio), "seed": int(seed),
                      **({} if depths is None else {"fixed_depths": depths}), **dict(meta or {})})
    return arch
