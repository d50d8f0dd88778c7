"""The Python API: prune your own model on your own DataLoaders, in a notebook or a training script.

::

    result = tas.search(model, train_loader, val_loader, flops_ratio=0.5, epochs=2)   # -> SearchResult
    tas.distill(result.slim, model, train_loader, val_loader, epochs=3)               # trains it in place
    tas.export_onnx(result.slim, "slim.onnx")

Each call runs the code the commands run (:class:`tas.nas.searcher.Searcher` behind ``tas search``,
:func:`tas.train.distill.distill` behind ``tas train --arch``); the commands only add reading a teacher
run and building the loaders of ``--dataset``. Keyword arguments are the commands' flags (dashes
become underscores: ``arch_lr=0.01``, ``selection="sapp"``), except the ones that build data, which
the loaders replace. ``output=`` names a run directory: the same files, ``resume=True`` and
TensorBoard events as the commands write; without it, nothing is written (the resumable state and
the events live in a temporary directory for the length of the call).
"""
from __future__ import annotations

import dataclasses
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch.nn as nn

from . import distributed
from .errors import TasError
from .nas.config import SearchConfig
from .nas.searcher import SearchData, Searcher, SearchResult
from .train.config import TrainConfig
from .io.rundir import run_lock
from .data import DatasetInfo
from .train.distill import distill as distill_stage
from .train.distill import student_spec
from .train.loop import Context, check_output

__all__ = ["search", "distill", "SearchResult"]

#: flags of the commands that build the model or the data: the arguments given here replace them
_SEARCH_DATA_FLAGS = ("teacher", "model", "data_dir", "download", "img_size", "augment", "limit", "workers",
                      "batch_size")
_DISTILL_DATA_FLAGS = ("model", "data_dir", "download", "img_size", "limit", "workers", "batch_size",
                       "pretrained", "pretrained_path", "arch", "teacher", "init", "recon_batches")


def _config(cls: type, where: str, replaced: Iterable[str], values: Mapping[str, Any]) -> Any:
    """``cls`` (a command's settings) from keyword arguments named like its flags, validated."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key in replaced:
            raise TypeError(f"{where}() does not take {key}=: the model and loaders you pass decide it")
        if key not in names:
            raise TypeError(f"{where}() got an unexpected keyword argument {key!r} (its options are the "
                            f"command's flags: {', '.join(sorted(names - set(replaced)))})")
    return cls.from_args(values)


def _lock(output: str | Path | None) -> Any:
    """The run directory's writer lock, as the commands hold it (:func:`tas.io.rundir.run_lock`); none without one."""
    return nullcontext() if output is None else run_lock(output, enabled=distributed.is_main())


def _input_size(loader: Iterable) -> tuple[int, int, int]:
    """``(C, H, W)`` of the loader's first image (read from its dataset, without iterating, where it can)."""
    try:
        image = loader.dataset[0][0]
    except (AttributeError, IndexError, KeyError, TypeError, NotImplementedError):
        image = next(iter(loader))[0][0]
    if image.dim() != 3:
        raise TasError(f"the loader's images must be C x H x W tensors, got shape {tuple(image.shape)}")
    return tuple(int(d) for d in image.shape)


def search(model: nn.Module, train_loader: Iterable, val_loader: Iterable, *, test_loader: Iterable | None = None,
           flops_ratio: float | None = None, params_ratio: float | None = None, latency_ratio: float | None = None,
           epochs: float = 2, output: str | Path | None = None, resume: bool = False, overwrite: bool = False,
           device: str = "auto", input_size: tuple[int, int, int] | None = None, dataset: str = "custom",
           **options: Any) -> SearchResult:
    """Search a pruned architecture of ``model`` within a FLOPs, params or latency budget (TAS).

    Args:
        model: the trained network (a supported timm family: ResNet, EfficientNet, MobileNetV3, or
            tas's cifar_resnet*); it is copied, never changed.
        train_loader: ``(images, labels)`` batches for the weight step.
        val_loader: batches for the architecture step, held out from ``train_loader`` (the TAS
            bi-level split; e.g. the other half of the training set).
        test_loader: batches the derived architecture is scored on every epoch (default: ``val_loader``).
        flops_ratio, params_ratio, latency_ratio: the budget as a fraction of the original
            (default: 0.5 of the FLOPs); as ``--flops-ratio`` etc.
        epochs: passes over ``train_loader``; a fraction ends partway through the last.
        output: a run directory to write (``arch.json``, ``model.safetensors``, ``metrics.json``,
            TensorBoard, ``state/``); None writes nothing.
        resume, overwrite: continue the search in ``output``, or replace the one there.
        device: ``auto``, ``cpu`` or ``cuda``.
        input_size: ``(C, H, W)`` the costs are counted at (default: the first image's).
        dataset: a name for the data, recorded in ``arch.json``.
        **options: any other flag of ``tas search`` (``arch_lr``, ``selection``, ``space``,
            ``tolerance``, ``seed``, ``progress``, ...).

    Returns:
        The :class:`~tas.nas.searcher.SearchResult`: ``arch``, its ``slim`` network, the per-epoch
        ``history``, the ``metrics``, the ``supernet`` and the ``run_dir``.
    """
    values = dict(flops_ratio=flops_ratio, params_ratio=params_ratio, latency_ratio=latency_ratio, epochs=epochs,
                  resume=resume, overwrite=overwrite, device=device, dataset=dataset, **options)
    if output is not None:
        values["output"] = str(output)
    cfg = _config(SearchConfig, "tas.search", _SEARCH_DATA_FLAGS, values)
    size = tuple(input_size) if input_size is not None else _input_size(train_loader)
    data = SearchData(train_loader, val_loader, test_loader if test_loader is not None else val_loader,
                      input_size=size, name=dataset)
    with distributed.session(cfg.device) as dev, _lock(output):
        return Searcher(cfg, model, data, dev, output=output).run()


def distill(slim: nn.Module, teacher: nn.Module, train_loader: Iterable, val_loader: Iterable, *, epochs: float = 3,
            output: str | Path | None = None, resume: bool = False, overwrite: bool = False, device: str = "auto",
            arch: Any = None, dataset: str = "custom", **options: Any) -> dict[str, Any]:
    """Train ``slim`` (in place) from the frozen ``teacher`` by knowledge distillation.

    ``(1 − kd_alpha)·CE + kd_alpha·T²·KL(teacher ‖ slim)``, the optimiser and schedule of ``tas train``.

    Args:
        slim: the pruned network, e.g. ``tas.search(...).slim`` or ``tas.materialize(teacher, arch)``.
        teacher: the network it was pruned from (frozen, eval mode).
        train_loader, val_loader: ``(images, labels)`` batches to train on and to report test top-1 on.
        epochs: passes over ``train_loader``; a fraction ends partway through the last.
        output: a run directory to write (as ``tas train --arch``: ``tas.load_slim(output)`` rebuilds
            the trained network); None writes nothing.
        resume, overwrite, device: as the flags.
        arch: the slim network's :class:`~tas.prune.arch.Arch` (default: ``slim.tas_arch``, which
            :func:`tas.prune.materialize` sets).
        dataset: a name for the data, recorded in ``config.json``.
        **options: any other flag of ``tas train`` (``lr``, ``kd_alpha``, ``kd_temperature``,
            ``no_kd``, ``opt``, ``sched``, ``seed``, ``progress``, ...).

    Returns:
        The final metrics (``top1``, ``top5``, ``loss``, ``params``, ``flops``, ...) and ``run_dir``.
    """
    arch = arch if arch is not None else getattr(slim, "tas_arch", None)
    if arch is None:
        raise TasError("tas.distill: give arch=: this network does not carry the architecture it was built from")
    values = dict(epochs=epochs, resume=resume, overwrite=overwrite, device=device, dataset=dataset, **options)
    cfg = _config(TrainConfig, "tas.distill", _DISTILL_DATA_FLAGS, values)
    cfg.model, cfg.init = arch.model, "given"
    chans, height, width = arch.input_size
    if height != width:
        raise TasError(f"tas.distill: the architecture's input size {arch.input_size} is not square")
    info = DatasetInfo(dataset, int(arch.model_kwargs["num_classes"]), chans, height, mean=(), std=())
    if resume and output is None:
        raise TasError("tas.distill: resume needs the output directory to resume from")
    with tempfile.TemporaryDirectory(prefix="tas-distill-") if output is None else nullcontext(output) as out:
        cfg.output = str(out)
        with distributed.session(cfg.device) as dev, _lock(output):
            ctx = Context(output=check_output(cfg), device=dev, info=info, mode="distill",
                          loaders={"train": train_loader, "test": val_loader}, persist=output is not None)
            metrics = distill_stage(cfg, ctx, slim, student_spec(cfg, arch, None), teacher)
    return {**metrics, "run_dir": str(output) if output is not None else None}
