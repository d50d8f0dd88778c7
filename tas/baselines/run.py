"""``search.py --method uniform|uniform-depth|l1|synflow|random|plasticity``: a baseline's run directory, in the TAS search's shape.

:func:`run_baseline` writes what :func:`tas.nas.run.search` writes, so everything downstream
(``train.py --arch``, ``tas.load_slim``, ``python -m tas.export``) takes either::

    runs/l1/
      arch.json            the architecture (tas.Arch, ``method`` = the baseline)
      model.safetensors    the slim network materialised from the teacher (tas.load_slim)
      config.json          with ``arch``, ``stage: search`` and the settings under ``search``
      metrics.json         flops/params and their ratios, the target, ``method``, and the test top-1
                           of the pruned network before any fine-tuning (``top1_pruned``)
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping

from ..io.checkpoint import has_state
from ..prune.arch import Arch
from ..prune.channel_order import class_batches
from ..cli import format_table
from ..errors import TasError
from ..io.rundir import is_finished_run, run_lock, save_run
from .base import BASELINES, NEEDS_DATA, TRAINING, create_baseline_arch, list_baselines
from ..nas.config import SearchConfig
from ..train import engine
from .. import data
from ..prune.materialize import materialize
from ..nas.run import load_teacher_and_data
from ..distributed import resolve_device
from ..train.loop import seed_everything

__all__ = ["run_baseline"]


def run_baseline(args: Any) -> dict[str, Any]:
    """Run the baseline ``args.method`` that search.py's flags describe; returns the metrics and the arch.

    Uses ``teacher``, ``model``, ``space``, ``flops_ratio`` / ``params_ratio``, ``tolerance``
    (only to report ``within_tolerance`` like TAS), ``dataset``, ``data_dir``, ``img_size``,
    ``limit``, ``batch_size``, ``seed``, ``output``, ``overwrite``, ``device``; TAS's optimisation
    flags are ignored, except by a baseline that trains (:data:`~tas.baselines.TRAINING`: ``plasticity``),
    which fine-tunes on the training split for ``epochs`` with ``lr``, ``momentum``, ``weight_decay``
    (``augment`` applies). Library callers may add ``synflow_rounds``, ``calibration_batches``
    (default 8) and ``undecayed_weight_decay``, and for the baselines of :data:`~tas.baselines.FIXED_DEPTHS`
    ``depths`` (every stage's depth, or the path of an ``arch.json`` whose depths to keep). The baselines of :data:`~tas.baselines.NEEDS_DATA`
    (``undecayed``, ``task-aware``) read ``calibration_batches`` unaugmented training batches
    (``task-aware`` also as many batches of ``task_classes`` samples); the others choose without
    data. The test split is read only to report ``top1_pruned``.
    """
    values = dict(args) if isinstance(args, Mapping) else dict(vars(args))
    method = values.get("method")
    if method not in BASELINES:
        raise TasError(f"unknown baseline method {method!r} (one of {', '.join(list_baselines())})")
    cfg = SearchConfig.from_args(values)
    with run_lock(cfg.output):
        return _run_baseline(cfg, method, values)


def _options(method: str, values: Mapping[str, Any], cfg: Any, train: Any) -> dict[str, Any]:
    """The method's options from the flags; calibration batches for the methods that read data."""
    options: dict[str, Any] = {}
    if values.get("depths") is not None:
        depths = values["depths"]
        options["depths"] = Arch.from_json(depths).depths if isinstance(depths, (str, Path)) else dict(depths)
    if method == "synflow" and values.get("synflow_rounds"):
        options["rounds"] = int(values["synflow_rounds"])
    if method not in NEEDS_DATA:
        return options
    n = int(values.get("calibration_batches") or 8)
    options["batches"] = [b for _, b in zip(range(n), train)]
    if method == "undecayed":
        options["weight_decay"] = float(values.get("undecayed_weight_decay") or 0.0)
    if method == "task-aware":
        if not cfg.task_classes:
            raise TasError("--method task-aware needs --task-classes (the class ids of the task)")
        options["task_batches"] = class_batches(train, cfg.task_classes, n)
    return options


def _run_baseline(cfg: Any, method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    out = Path(cfg.output)
    if cfg.resume:
        raise TasError(f"--resume: the {method} baseline runs in one go and keeps no state; "
                       "pass --overwrite to run it again")
    if not cfg.overwrite and (is_finished_run(out) or has_state(out)):
        raise TasError(f"{out} already holds a search; pass --overwrite or another --output")
    teacher, tconfig, info = load_teacher_and_data(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    input_size = (info.in_chans, info.img_size, info.img_size)
    # calibration batches are read unaugmented; a training baseline trains on the augmented split
    loaders = data.create_loaders(cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, workers=cfg.workers,
                                  seed=cfg.seed, download=cfg.download, img_size=info.img_size, limit=cfg.limit,
                                  augment=cfg.augment and method not in NEEDS_DATA, pin_memory=device.type == "cuda")
    options = _options(method, values, cfg, loaders["train"])
    if method in TRAINING:
        if not isinstance(cfg.epochs, int):
            raise TasError(f"--method {method} fine-tunes whole epochs; got --epochs {cfg.epochs}")
        options.update(epochs=cfg.epochs, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    print(f"pruning {tconfig['model']} with the {method} baseline: target {cfg.metric} ratio {cfg.ratio}")
    t0 = time.perf_counter()
    trained = {"train_loader": loaders["train"], "device": device} if method in TRAINING else {}
    arch = create_baseline_arch(method, teacher, cfg.ratio, cfg.metric, space=cfg.space, input_size=input_size,
                                model_name=tconfig["model"], model_kwargs=tconfig["model_kwargs"], seed=cfg.seed,
                                meta={"dataset": cfg.dataset, "teacher": str(cfg.teacher)}, **options, **trained)
    slim = materialize(teacher, arch).cpu()
    wall = time.perf_counter() - t0
    val = engine.evaluate(slim.to(device), loaders["test"], device, per_class=True)
    slim.cpu()
    achieved = getattr(arch, f"{cfg.metric}_ratio")
    within = cfg.band[0] <= achieved <= cfg.band[1]
    metrics = {"method": method, "top1_pruned": val["top1"], "per_class_recall": val["per_class_recall"],
               "flops": arch.flops, "params": arch.params, "flops_ratio": arch.flops_ratio,
               "params_ratio": arch.params_ratio, "target_metric": cfg.metric, "target_ratio": cfg.ratio,
               "band": list(cfg.band), "within_tolerance": within, "wall_time_s": round(wall, 3)}
    out.mkdir(parents=True, exist_ok=True)
    arch.to_json(out / "arch.json")
    settings = {"method": method, **dataclasses.asdict(cfg),
                **{k: v for k, v in options.items() if k not in ("batches", "task_batches")}}
    save_run(out, slim, model_name=arch.model, model_kwargs=arch.model_kwargs, input_size=arch.input_size,
             metrics=metrics, extra_config={"stage": "search", "arch": arch.to_dict(), "dataset": cfg.dataset,
                                            "data": {"img_size": info.img_size, "mean": list(info.mean),
                                                     "std": list(info.std)},
                                            "search": settings})
    print(format_table(arch.summary_rows(), header=["group / stage", "original", "chosen"]))
    summary = [
        ["method", "", method],
        ["FLOPs (MACs)", f"{arch.full_flops:,}", f"{arch.flops:,} ({arch.flops_ratio:.3f})"],
        ["params", f"{arch.full_params:,}", f"{arch.params:,} ({arch.params_ratio:.3f})"],
        [f"target {cfg.metric} ratio", "", f"{cfg.ratio} (band {cfg.band[0]:.3g}-{cfg.ratio}): {'met' if within else 'MISSED'}"],
        ["test top-1, pruned (no fine-tuning)", "", f"{val['top1']:.2f}%"],
        ["wall time", "", f"{wall:.1f} s"],
        ["arch", "", str(out / "arch.json")],
    ]
    print(format_table(summary, header=[method, "original", "result"]))
    print(f"next: python train.py --arch {out / 'arch.json'} --teacher {cfg.teacher} --output <dir>")
    return {**metrics, "arch": arch, "run_dir": str(out)}
