"""``tas train``'s job: train a teacher, or distil a searched slim network (``--arch``), into a run directory.

:func:`train` takes the command's flags and runs one of the two recipes under the run directory's
lock: :func:`tas.train.loop.fit` with cross-entropy for a teacher, :func:`tas.train.distill.distill`
for a slim network.
"""
from __future__ import annotations

from typing import Any

from .. import distributed
from ..errors import TasError
from ..io.rundir import run_lock
from ..models.factory import check_model_name
from . import engine
from .distill import distill, prepare_distillation
from .config import TrainConfig
from .loop import build_teacher, fit, prepare

__all__ = ["train"]


def train(args: Any, mode: str = "teacher") -> dict[str, Any]:
    """Train the network train.py's flags describe and write a finished run to ``--output``.

    Args:
        args: an argparse ``Namespace`` from train.py, a mapping, or a :class:`TrainConfig`.
        mode: ``"teacher"`` (a timm model with cross-entropy) or ``"distill"`` (the slim network of
            ``--arch``, initialised from ``--teacher``'s kept channels or from scratch, trained with
            ``(1 − α)·CE + α·T²·KL`` from the frozen teacher, or plain CE with ``--no-kd``).

    Returns:
        The final metrics (``top1``, ``top5``, ``loss``, ``params``, ``flops``, ``wall_time_s``,
        ``epochs``, ``per_class_recall``, ``train_loss``) and ``run_dir``.
    """
    if mode not in ("teacher", "distill"):
        raise TasError(f"unknown training mode {mode!r}")
    cfg = TrainConfig.from_args(args)
    with distributed.session(cfg.device), run_lock(cfg.output, enabled=distributed.is_main()):
        return _train(cfg, mode)


def _train(cfg: TrainConfig, mode: str) -> dict[str, Any]:
    if mode == "teacher":
        check_model_name(cfg.model)  # before any data is read
        ctx = prepare(cfg, mode=mode)
        model, spec = build_teacher(cfg, ctx)
        return fit(cfg, ctx, model, spec, loss_fn=engine.cross_entropy_loss(cfg.label_smoothing))

    ctx, student, spec, teacher = prepare_distillation(cfg)
    return distill(cfg, ctx, student, spec, teacher)
