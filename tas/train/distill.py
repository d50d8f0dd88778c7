"""Knowledge distillation of the slim network from its teacher (Hinton et al. 2015; TAS's last stage).

``L = (1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))`` with the teacher frozen in
eval mode; α = 0.9 and T = 4 as in the TAS code.

The stage itself is train.py's ``distill`` mode, :mod:`tas.train.loop`'s loop with a different model
and loss::

    ctx, student, spec, teacher = prepare_distillation(cfg)   # --arch, --teacher, --init
    distill(cfg, ctx, student, spec, teacher)                  # fit() with the KD loss

A caller may swap the student between the two (a benchmark starting from the search's weights).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import engine
from .amp import Precision
from ..errors import ArchError, TasError
from .config import TrainConfig
from .loop import Context, RunSpec, fit, prepare
from ..prune.arch import Arch
from ..prune.materialize import build_slim, materialize
from ..prune.load import load_original, load_run
from ..prune.reconstruct import calibration_batches, reconstruct

__all__ = ["kd_loss", "distillation_loss", "load_arch", "build_student", "student_spec", "prepare_distillation",
           "distill"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            alpha: float = 0.9, temperature: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, ce, kd)``: the KD objective and its two terms (``kd`` already scaled by T²)."""
    ce = F.cross_entropy(student_logits, targets)
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    kd = kl * t * t
    return (1 - alpha) * ce + alpha * kd, ce, kd


def distillation_loss(teacher: nn.Module, alpha: float = 0.9, temperature: float = 4.0
                      ) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]:
    """A training ``loss_fn(model, images, targets)`` distilling from the frozen ``teacher``."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(model: nn.Module, images: torch.Tensor, targets: torch.Tensor):
        with torch.no_grad():
            t_logits = teacher.eval()(images)
        total, ce, kd = kd_loss(model(images), t_logits, targets, alpha, temperature)
        return total, {"ce": ce.detach(), "kd": kd.detach()}

    return loss_fn


def load_arch(path: str) -> Any:
    """An :class:`~tas.prune.arch.Arch` from ``arch.json`` or from a search run directory holding one."""
    p = Path(path)
    return Arch.from_json(p / "arch.json" if p.is_dir() else p)


def _check_teacher_data(cfg: TrainConfig, tconfig: dict[str, Any], info: Any) -> None:
    """Refuse a teacher with another class count than ``--dataset`` (exit 2); warn (stderr) when
    ``--dataset`` is not the dataset the teacher's ``config.json`` records.

    A teacher's soft targets on a dataset it never saw carry little knowledge, and with the same
    class count nothing else would fail: the run trains, only worse than it should.
    """
    classes = tconfig.get("model_kwargs", {}).get("num_classes")
    if classes is not None and int(classes) != int(info.num_classes):
        raise TasError(f"the teacher in {cfg.teacher} has {classes} classes, but --dataset {cfg.dataset} has "
                       f"{info.num_classes}; distil on the data the teacher was trained for")
    trained_on = tconfig.get("dataset")
    if trained_on is not None and trained_on != cfg.dataset:
        print(f"warning: the teacher in {cfg.teacher} was trained on {trained_on}, but --dataset is {cfg.dataset}: "
              f"it distils on data the teacher never saw (both have {info.num_classes} classes, so nothing "
              "else would notice); recorded in metrics.json as teacher_dataset and dataset", file=sys.stderr)


def build_student(cfg: TrainConfig, ctx: Context) -> tuple[nn.Module, RunSpec, nn.Module]:
    """The slim network of ``--arch`` and its ``--teacher``: ``(student, spec, teacher)``.

    ``--init inherit`` gathers the teacher's kept channels (the cheap practical path);
    ``--init reconstruct`` then refits every layer whose inputs were pruned to the teacher's outputs
    on ``--recon-batches`` training batches (:func:`tas.prune.reconstruct.reconstruct`);
    ``--init scratch`` builds the same shape with fresh random weights (the paper's recipe);
    ``--init search`` starts from the weights saved beside ``arch.json`` (a search run's: the
    supernet's, trained during the search, at the chosen channels and candidate BNs).
    """
    if not cfg.teacher:
        raise TasError("--arch needs --teacher: the run directory of the network the arch was searched from")
    arch = load_arch(cfg.arch)
    teacher, tconfig = load_original(cfg.teacher, f"--teacher {cfg.teacher}")
    if tconfig["model"] != arch.model or any(tconfig["model_kwargs"].get(k) != arch.model_kwargs.get(k)
                                             for k in ("num_classes", "in_chans")):
        raise ArchError(f"the architecture in {cfg.arch} was searched on {arch.model} {arch.model_kwargs}; "
                        f"the teacher in {cfg.teacher} is {tconfig['model']} {tconfig['model_kwargs']}")
    info = ctx.info
    _check_teacher_data(cfg, tconfig, info)
    if (info.in_chans, info.img_size, info.img_size) != tuple(arch.input_size):
        raise TasError(f"the architecture's costs are for inputs {arch.input_size}, the data is "
                       f"{[info.in_chans, info.img_size, info.img_size]}; pass --img-size {arch.input_size[1]}")
    if cfg.init == "search":
        student = _searched_weights(cfg.arch, arch)
    else:
        student = build_slim(arch) if cfg.init == "scratch" else materialize(teacher, arch)
    if cfg.init == "reconstruct":
        _reconstruct(student, teacher, ctx, cfg.recon_batches)
    return student.train(), student_spec(cfg, arch, str(cfg.teacher), tconfig.get("dataset")), teacher


def _searched_weights(arch_path: str, arch: Arch) -> nn.Module:
    """``--init search``: the slim network saved in the run directory ``arch_path`` names (or holds)."""
    run = Path(arch_path)
    run = run if run.is_dir() else run.parent
    if not (run / "config.json").is_file():
        raise TasError(f"--init search needs --arch to be a search run directory (or its arch.json); {run} holds "
                       "no config.json and weights")
    student, config = load_run(run)
    saved = Arch.from_dict(config["arch"]) if "arch" in config else None
    if saved is None or (saved.groups, saved.depths) != (arch.groups, arch.depths):
        raise ArchError(f"--init search: the weights in {run} are for another architecture than {arch_path}")
    return student


def _reconstruct(student: nn.Module, teacher: nn.Module, ctx: Context, batches: int) -> None:
    """``--init reconstruct`` on the run's device, with a one-line account of the fit."""
    device = ctx.device
    student.to(device), teacher.to(device)
    fits = reconstruct(student, teacher, calibration_batches(ctx.loaders["train"], batches))
    before = sum(f.before for f in fits) / max(len(fits), 1)
    after = sum(f.after for f in fits) / max(len(fits), 1)
    print(f"reconstruct: {len(fits)} layers refitted on {batches} batches; mean relative output error "
          f"{before:.4f} (inherited) -> {after:.4f}")


def student_spec(cfg: TrainConfig, arch: Any, teacher: str | None, teacher_dataset: str | None = None) -> RunSpec:
    """How a distilled slim network is described in ``config.json``: its arch (so
    :func:`tas.load_slim` rebuilds it), where its ``teacher`` came from and the dataset it was
    trained on (when known), ``--init`` and the KD settings."""
    extra = {"arch": arch.to_dict(), "teacher": teacher, "teacher_dataset": teacher_dataset, "init": cfg.init,
             **({"recon_batches": cfg.recon_batches} if cfg.init == "reconstruct" else {}),
             "kd": None if cfg.no_kd else {"alpha": cfg.kd_alpha, "temperature": cfg.kd_temperature}}
    return RunSpec(arch.model, dict(arch.model_kwargs), tuple(arch.input_size), extra)


def prepare_distillation(cfg: TrainConfig) -> tuple[Context, nn.Module, RunSpec, nn.Module]:
    """Everything but the training of a distillation run: ``(ctx, student, spec, teacher)``.

    Takes the model name and (unless ``--img-size`` is given) the input size from ``--arch``, then
    :func:`tas.train.loop.prepare` (output checks, device, seeds, data) and :func:`build_student`.
    """
    if not cfg.arch:
        raise TasError("distillation needs --arch (an arch.json or a search run directory)")
    arch = load_arch(cfg.arch)
    cfg.model = arch.model
    if cfg.img_size is None:
        cfg.img_size = arch.input_size[1]
    ctx = prepare(cfg, mode="distill")
    student, spec, teacher = build_student(cfg, ctx)
    return ctx, student, spec, teacher


def distill(cfg: TrainConfig, ctx: Context, student: nn.Module, spec: RunSpec, teacher: nn.Module
            ) -> dict[str, Any]:
    """Train ``student`` from the frozen ``teacher`` (:func:`tas.train.loop.fit`, KD loss, or plain CE
    with ``--no-kd``); the teacher's test top-1 is logged beside the student's for reference."""
    Precision(device=ctx.device, channels_last=cfg.channels_last).model(teacher.to(ctx.device))
    reference = {"val/teacher_top1": engine.evaluate(teacher, ctx.loaders["test"], ctx.device)["top1"]}
    loss_fn = (engine.cross_entropy_loss(cfg.label_smoothing) if cfg.no_kd
               else distillation_loss(teacher, cfg.kd_alpha, cfg.kd_temperature))
    data = {"dataset": cfg.dataset, "teacher_dataset": spec.extra_config.get("teacher_dataset")}
    return fit(cfg, ctx, student, spec, loss_fn=loss_fn, reference=reference, extra_metrics=data)
