"""The search as search.py runs it: read ``--teacher``, build the loaders of ``--dataset`` and run a
:class:`~tas.nas.searcher.Searcher` into ``--output`` (what ``tas search`` and ``python search.py`` call).

Library callers with their own model and loaders use :func:`tas.search` (:mod:`tas.api`) instead.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import distributed
from ..data import create_loaders, dataset_info
from ..errors import TasError
from ..io.rundir import run_lock
from ..prune.load import load_original
from ..train.loop import seed_everything
from .config import SearchConfig
from .searcher import SearchData, Searcher, check_output

__all__ = ["load_teacher", "load_teacher_and_data", "search"]


def load_teacher_and_data(cfg: Any) -> tuple[torch.nn.Module, dict, Any]:
    """The teacher, its config, and the dataset info at its input size; refuses a dataset whose
    classes or channels do not fit the teacher."""
    teacher, tconfig = load_teacher(cfg)
    info = dataset_info(cfg.dataset, cfg.data_dir, cfg.img_size or tconfig["input_size"][1])
    kwargs = tconfig["model_kwargs"]
    if info.num_classes != kwargs["num_classes"] or info.in_chans != kwargs["in_chans"]:
        raise TasError(f"the teacher in {cfg.teacher} has {kwargs['num_classes']} classes and {kwargs['in_chans']} "
                       f"input channels; {cfg.dataset} has {info.num_classes} and {info.in_chans}")
    return teacher, tconfig, info


def load_teacher(cfg: Any) -> tuple[torch.nn.Module, dict]:
    """The trained network of ``cfg.teacher`` and its config; refuses pruned or mismatching runs."""
    if not cfg.teacher:
        raise TasError("--teacher: give the run directory of the trained network to prune (train.py --output)")
    model, config = load_original(cfg.teacher, f"--teacher {cfg.teacher}")
    if cfg.model and cfg.model != config["model"]:
        raise TasError(f"--model {cfg.model} does not match the teacher in {cfg.teacher} ({config['model']})")
    return model, config


def search(args: Any) -> dict[str, Any]:
    """Run the search search.py's flags describe: read ``--teacher``, build the loaders of
    ``--dataset``, and run a :class:`Searcher` into ``--output``; returns the final metrics, the
    ``arch`` and the ``run_dir``.

    Under ``torchrun`` every rank runs this; see :mod:`tas.distributed` for what is shared.
    Only rank 0 writes the run directory.
    """
    cfg = SearchConfig.from_args(args)
    with distributed.session(cfg.device) as device, run_lock(cfg.output, enabled=distributed.is_main()):
        out = check_output(cfg)
        teacher, tconfig, info = load_teacher_and_data(cfg)
        seed_everything(cfg.seed)
        loaders = create_loaders(cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size, workers=cfg.workers,
                                 seed=cfg.seed, download=cfg.download, img_size=info.img_size, search_split=True,
                                 limit=cfg.limit, distributed=True, augment=cfg.augment,
                                 pin_memory=device.type == "cuda")
        data = SearchData(loaders["train"], loaders["val"], loaders["test"],
                          input_size=(info.in_chans, info.img_size, info.img_size), name=cfg.dataset, info=info)
        result = Searcher(cfg, teacher, data, device, model_name=tconfig["model"],
                          model_kwargs=tconfig["model_kwargs"], teacher_source=str(cfg.teacher), output=out).run()
    return {**result.metrics, "arch": result.arch, "run_dir": str(out)}
