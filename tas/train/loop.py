"""Train a network end to end: the first stage of the pipeline (the teacher) and, later, the last.

:func:`train` turns train.py's flags into a finished run directory (:mod:`tas.io.rundir`). It is split
so that other modes reuse everything but the model and the loss::

    cfg  = TrainConfig.from_args(args)
    ctx  = prepare(cfg)                       # output-dir checks, device, seeds, data
    model, spec = build_teacher(cfg, ctx)     # <- distillation builds the slim student here
    fit(cfg, ctx, model, spec, loss_fn=cross_entropy_loss())   # <- ... and passes a KD loss

(:mod:`tas.train.distill` is that mode.) :func:`fit` owns the loop, TensorBoard, the resumable state and
the final artefacts. Nothing is written under the final names (``model.safetensors``,
``config.json``, ``metrics.json``) until the run has finished, so a failing run never replaces a
good earlier one.

Resuming is bit-identical on the CPU with ``--workers 0``: the train loader's shuffling is
reseeded from ``(seed, epoch)`` at the start of every epoch and the RNG state (which drives the
augmentation) is saved with the weights and optimizer after every epoch.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from .. import distributed, tb
from ..cli import format_table
from ..data import create_loaders, dataset_info
from ..distributed import resolve_device
from ..errors import CheckpointError, TasError
from ..io.checkpoint import check_extension, has_state, load_state, rng_state, save_state, set_rng_state
from ..io.rundir import WEIGHTS_NAME, check_output_dir, is_finished_run, save_run
from ..models.factory import create_model, load_state_dict_strict
from ..prune.flops import count_flops, count_params
from . import engine
from .amp import Precision
from .config import INITS, SCHEDULERS, TrainConfig

__all__ = ["TrainConfig", "RunSpec", "Context", "SCHEDULERS", "INITS", "check_output", "prepare", "build_teacher", "fit",
           "seed_everything", "create_optimizer", "create_scheduler"]

#: settings a resumed run must share with the run it resumes (others, e.g. --epochs, may change)
_RESUME_KEYS = ("mode", "model", "dataset", "img_size", "batch_size", "seed", "limit")


@dataclass
class RunSpec:
    """How the trained model is described in ``config.json`` (see :func:`tas.io.rundir.save_run`)."""

    model_name: str
    model_kwargs: dict[str, Any]
    input_size: tuple[int, int, int]
    extra_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What :func:`prepare` sets up: output directory, device, dataset info and loaders."""

    output: Path
    device: torch.device
    info: Any  # tas.data.DatasetInfo
    loaders: dict[str, Any]
    mode: str = "teacher"
    #: False when ``output`` is a temporary directory (tas.distill without ``output=``): the summary names no files
    persist: bool = True

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.info.in_chans, self.info.img_size, self.info.img_size)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_output(cfg: TrainConfig) -> Path:
    """``--output`` as a :class:`Path`, checked before anything is read or trained: ``--resume``
    needs a resumable state there; otherwise a finished or unfinished run there needs ``--overwrite``."""
    out = check_output_dir(cfg.output)
    if cfg.resume:
        if not has_state(out):
            raise CheckpointError(f"--resume: no resumable state in {out} (expected {out / 'state' / 'state.json'})")
    elif not cfg.overwrite:
        if is_finished_run(out):
            raise TasError(f"{out} already holds a finished run ({WEIGHTS_NAME}); pass --overwrite to "
                           "replace it, --resume to train it further, or choose another --output")
        if has_state(out):
            raise TasError(f"{out} holds an unfinished run; pass --resume to continue it or --overwrite "
                           "to start over")
    return out


def prepare(cfg: TrainConfig, mode: str = "teacher") -> Context:
    """Check the output directory, pick the device, seed everything and build the loaders.

    The output directory is checked first, so a run that would be refused fails before any
    data is read.
    """
    out = check_output(cfg)
    device = distributed.rank_device(resolve_device(cfg.device))
    seed_everything(cfg.seed)
    info = dataset_info(cfg.dataset, cfg.data_dir, cfg.img_size)
    loaders = create_loaders(cfg.dataset, data_dir=cfg.data_dir, batch_size=cfg.batch_size,
                             workers=cfg.workers, seed=cfg.seed, download=cfg.download,
                             img_size=cfg.img_size, limit=cfg.limit, distributed=True,
                             pin_memory=device.type == "cuda")
    return Context(output=out, device=device, info=info, loaders=loaders, mode=mode)


def build_teacher(cfg: TrainConfig, ctx: Context) -> tuple[nn.Module, RunSpec]:
    """The timm model ``--model`` for the dataset, and how to describe it in ``config.json``."""
    kwargs = {"num_classes": ctx.info.num_classes, "in_chans": ctx.info.in_chans}
    model = create_model(cfg.model, pretrained=cfg.pretrained, pretrained_path=cfg.pretrained_path, **kwargs)
    return model, RunSpec(model_name=cfg.model, model_kwargs=kwargs, input_size=ctx.input_size)


def create_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` (no weight decay on biases and norms)."""
    try:
        return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum)
    except (ValueError, KeyError, AssertionError) as e:
        raise TasError(f"--opt {cfg.opt!r}: {e} (see timm.optim.list_optimizers())") from None


def create_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> Any:
    """A timm scheduler stepped per update (``step_update``), with linear warmup; None for ``none``."""
    if cfg.sched == "none":
        return None
    extra = {}
    if cfg.sched == "multistep":  # the classic CIFAR ResNet schedule: /10 at 50% and 75%
        extra["decay_milestones"] = sorted({max(1, cfg.epochs // 2), max(1, (3 * cfg.epochs) // 4)})
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=min(cfg.warmup_lr, cfg.lr), min_lr=cfg.min_lr, step_on_epochs=False,
        updates_per_epoch=max(1, updates_per_epoch), **extra)
    return scheduler


def _reseed_loader(loader: Any, seed: int, epoch: int) -> None:
    """Make the epoch's shuffling a function of ``(seed, epoch)`` only (the same on every rank)."""
    gen = getattr(loader, "generator", None)
    if gen is not None:
        gen.manual_seed(seed * 1000 + epoch)


def _resume_identity(cfg: TrainConfig, ctx: Context) -> dict[str, Any]:
    return {"mode": ctx.mode, "model": cfg.model, "dataset": cfg.dataset, "img_size": ctx.info.img_size,
            "batch_size": cfg.batch_size, "seed": cfg.seed, "limit": cfg.limit}


def _train_settings(cfg: TrainConfig) -> dict[str, Any]:
    keys = ("epochs", "batch_size", "lr", "weight_decay", "momentum", "opt", "sched", "warmup_epochs",
            "warmup_lr", "min_lr", "label_smoothing", "seed", "limit", "pretrained", "pretrained_path")
    return {k: getattr(cfg, k) for k in keys}


def _fmt_count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


@dataclass
class _Progress:
    """Where a run stands: what its resumable state holds (all zero for a fresh run)."""

    start_epoch: int = 0  # epochs done when this process started
    num_updates: int = 0
    wall_time: float = 0.0  # seconds of the epochs done
    history: list[dict[str, Any]] = field(default_factory=list)
    start_step: int = 0  # steps done in the epoch under way (a mid-epoch resume)
    totals: tuple[float, int] = (0.0, 0)  # that epoch's running loss sum and count
    nan_stats: dict[str, int] = field(default_factory=lambda: {"skipped": 0})
    rng: Any = None
    scaler: dict[str, Any] = field(default_factory=dict)  # the fp16 loss scale (Precision.state_dict)


def _state(identity: Mapping[str, Any], p: _Progress, model: nn.Module, optimizer: torch.optim.Optimizer,
           epoch_done: int, step_in_epoch: int, wall_time: float,
           loss: tuple[float, int] | None = None, scaler: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resumable state: after ``epoch_done`` epochs and ``step_in_epoch`` steps of the next, whose
    running ``loss`` (sum, count) a mid-epoch state carries."""
    running = {"loss_sum": loss[0], "loss_count": loss[1]} if loss is not None else {}
    return {"identity": identity, "epoch": epoch_done, "num_updates": p.num_updates,
            "step_in_epoch": step_in_epoch, **running, "skipped_steps": p.nan_stats["skipped"],
            "wall_time_s": wall_time, "history": p.history, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "rng": rng_state(), "scaler": dict(scaler or {})}


def _resume(cfg: TrainConfig, ctx: Context, model: nn.Module, spec: RunSpec, optimizer: torch.optim.Optimizer,
            scheduler: Any, identity: Mapping[str, Any]) -> _Progress:
    """Load ``--output``'s resumable state into ``model`` and ``optimizer``; refuses a state of other settings."""
    out = ctx.output
    state = load_state(out)
    p = _Progress()
    try:
        for key in _RESUME_KEYS:
            if state["identity"].get(key) != identity[key]:
                flag = "--" + key.replace("_", "-")
                raise CheckpointError(
                    f"--resume: the run in {out} was trained with {flag} {state['identity'].get(key)!r}, "
                    f"not {identity[key]!r}; resume with the same settings or pass --overwrite to start over")
        check_extension(state, cfg.epochs, out)
        load_state_dict_strict(model, state["model"], model_name=spec.model_name, source=out / "state")
        optimizer.load_state_dict(state["optimizer"])
        p.start_epoch, p.num_updates = int(state["epoch"]), int(state["num_updates"])
        p.wall_time, p.history = float(state["wall_time_s"]), list(state["history"])
        p.start_step = int(state.get("step_in_epoch", 0))
        # Rank 0 saved its own running sum: restored on every rank, the epoch's mean would
        # count it once per rank. The other ranks' pre-resume samples drop out of the mean.
        p.totals = ((float(state.get("loss_sum", 0.0)), int(state.get("loss_count", 0)))
                    if distributed.is_main() else (0.0, 0))
        p.nan_stats["skipped"] = int(state.get("skipped_steps", 0))
        p.rng, p.scaler = state["rng"], dict(state.get("scaler") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"--resume: the state in {out / 'state'} is incomplete or from another "
                              f"run ({type(e).__name__}: {e})") from None
    if scheduler is not None:
        scheduler.step_update(num_updates=p.num_updates)
    if p.start_step:
        print(f"resuming {out} at epoch {p.start_epoch + 1}/{cfg.epochs}, step {p.start_step + 1}")
    elif p.start_epoch >= cfg.epochs:
        print(f"{out} was already trained for {p.start_epoch} epochs (--epochs {cfg.epochs}): "
              "re-evaluating and writing the run")
    else:
        print(f"resuming {out} at epoch {p.start_epoch + 1}/{cfg.epochs}")
    return p


def _train_epochs(cfg: TrainConfig, ctx: Context, model: nn.Module, trained: nn.Module,
                  optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: engine.LossFn, writer: Any,
                  p: _Progress, identity: Mapping[str, Any], reference: Mapping[str, float] | None
                  ) -> dict[str, Any] | None:
    """The epochs left: train, evaluate on the test split (TensorBoard ``val/*``), save the resumable
    state. Returns the last evaluation (``None`` when no epoch was left)."""
    out, device, main = ctx.output, ctx.device, distributed.is_main()
    train_loader, test_loader = ctx.loaders["train"], ctx.loaders["test"]
    result = None
    precision = Precision(cfg.amp, device, cfg.channels_last)  # one loss scale for the whole run
    precision.model(model)
    precision.load_state_dict(p.scaler)
    lengths = engine.epoch_lengths(cfg.epochs, len(train_loader))
    for epoch in range(p.start_epoch, len(lengths)):
        t0 = time.perf_counter()
        _reseed_loader(train_loader, cfg.seed, epoch)
        first = epoch == p.start_epoch
        if cfg.resume and first:
            set_rng_state(p.rng)  # after the sampler's reseed: the RNG left off where the state was saved

        def on_step(step_in_epoch: int, updates: int, loss_sum: float, loss_count: int) -> None:
            p.num_updates = updates
            if (main and cfg.checkpoint_every and updates % cfg.checkpoint_every == 0
                    and step_in_epoch < lengths[epoch]):
                save_state(out, _state(identity, p, model, optimizer, epoch, step_in_epoch,
                                       p.wall_time + time.perf_counter() - t0, loss=(loss_sum, loss_count),
                                       scaler=precision.state_dict()))

        train_loss, p.num_updates = engine.train_one_epoch(
            trained, train_loader, optimizer, loss_fn=loss_fn, device=device, scheduler=scheduler,
            epoch=epoch, num_updates=p.num_updates, writer=writer, progress=cfg.progress,
            log_every=cfg.log_every, start_step=p.start_step if first else 0,
            totals=p.totals if first else (0.0, 0), on_step=on_step, steps=lengths[epoch],
            nan_policy=cfg.nan_policy, stats=p.nan_stats, precision=precision)
        # DDP syncs buffers at the start of a forward: after the last step each rank's BN
        # statistics differ, and evaluation and the saved run must describe rank 0's model.
        distributed.broadcast_([b for b in model.buffers() if b.is_floating_point()])
        result = engine.evaluate(model, test_loader, device, per_class=True)
        if scheduler is not None:
            scheduler.step(epoch + 1, result["top1"])
        for key in ("top1", "top5", "loss"):
            writer.add_scalar(f"val/{key}", result[key], p.num_updates)
        for tag, value in (reference or {}).items():  # e.g. the teacher's top-1 beside the student's
            writer.add_scalar(tag, value, p.num_updates)
        writer.flush()
        seconds = time.perf_counter() - t0
        p.wall_time += seconds
        lr = engine.current_lr(optimizer)
        p.history.append({"epoch": epoch + 1, "train_loss": train_loss, "top1": result["top1"],
                          "top5": result["top5"], "loss": result["loss"], "lr": lr})
        print(f"epoch {epoch + 1}/{cfg.epochs}  train loss {train_loss:.4f}  test top-1 {result['top1']:.2f}%"
              f"  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  lr {lr:.4g}  {seconds:.1f}s",
              flush=True)
        if main:
            partway = {"ended_partway": cfg.epochs} if lengths[epoch] < len(train_loader) else {}
            save_state(out, {**_state(identity, p, model, optimizer, epoch + 1, 0, p.wall_time,
                                      scaler=precision.state_dict()), **partway})
    return result


def _write_run(cfg: TrainConfig, ctx: Context, model: nn.Module, spec: RunSpec, metrics: Mapping[str, Any],
               writer: Any, num_updates: int, stale_events: list[Path]) -> dict[str, Any]:
    """The finished run (``save_run``), its TensorBoard graph and HParams session; then the replaced
    run's event files go. Returns ``save_run``'s paths."""
    extra = {"stage": ctx.mode, "dataset": cfg.dataset,
             "data": {"img_size": ctx.info.img_size, "mean": list(ctx.info.mean), "std": list(ctx.info.std)},
             "train": _train_settings(cfg), **spec.extra_config}
    paths = save_run(ctx.output, model, model_name=spec.model_name, model_kwargs=spec.model_kwargs,
                     input_size=spec.input_size, metrics=metrics, extra_config=extra)
    try:
        tb.log_graph(writer, model, spec.input_size)
        arch = spec.extra_config.get("arch")
        tb.log_session(writer, tb.runs.train_hparams(cfg, ctx.mode, arch), tb.runs.train_results(metrics, arch),
                       num_updates)
    finally:
        writer.close()
    for old in stale_events:  # a replaced run's TensorBoard logs go only once the new run is written
        old.unlink(missing_ok=True)
    return paths


def _print_summary(cfg: TrainConfig, ctx: Context, spec: RunSpec, metrics: Mapping[str, Any],
                   paths: Mapping[str, Any]) -> None:
    out, train_loader, test_loader = ctx.output, ctx.loaders["train"], ctx.loaders["test"]
    rows = [
        ["model", spec.model_name],
        ["dataset", f"{cfg.dataset} ({len(train_loader.dataset)} train / {len(test_loader.dataset)} test, "
                    f"{'x'.join(map(str, spec.input_size))})"],
        ["epochs", metrics["epochs"]],
        ["test top-1", f"{metrics['top1']:.2f}%"],
        ["test top-5", f"{metrics['top5']:.2f}%"],
        ["test loss", f"{metrics['loss']:.4f}"],
        ["params", f"{metrics['params']:,} ({_fmt_count(metrics['params'])})"],
        ["FLOPs (MACs)", f"{metrics['flops']:,} ({_fmt_count(metrics['flops'])})"],
        ["wall time", f"{metrics['wall_time_s']:.1f} s"],
        *([["weights", paths["weights"]], ["config", paths["config"]], ["metrics", paths["metrics"]],
           ["resume state", out / "state"]] if ctx.persist else []),
    ]
    print(format_table(rows, header=[f"{ctx.mode} run", str(out) if ctx.persist else "(not saved)"]))
    if ctx.persist:
        print(f"TensorBoard: tensorboard --logdir {out}")


def fit(
    cfg: TrainConfig,
    ctx: Context,
    model: nn.Module,
    spec: RunSpec,
    *,
    loss_fn: engine.LossFn,
    reference: Mapping[str, float] | None = None,
    extra_metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.epochs`` (resuming if asked), then write the finished run.

    ``reference`` scalars (e.g. ``{"val/teacher_top1": 99.4}``) are logged beside the model's every
    epoch and stored in ``metrics.json`` under their last path component; ``extra_metrics`` go
    into ``metrics.json`` as they are (distillation records both datasets there).

    Every epoch: train, evaluate on the test split (TensorBoard ``val/*``), save the resumable
    state. At the end: ``save_run`` with the final metrics, and a summary table on stdout.

    Returns:
        The metrics written to ``metrics.json`` plus ``run_dir``.
    """
    out, device = ctx.output, ctx.device
    model.to(device)
    main = distributed.is_main()
    # Under torchrun, DDP averages gradients over the ranks (each rank's BN keeps its own batch
    # statistics, as is usual); evaluation, checkpoints and the run use the bare model.
    trained = distributed.data_parallel(model, device)
    optimizer = create_optimizer(cfg, model)
    scheduler = create_scheduler(cfg, optimizer, len(ctx.loaders["train"]))
    identity = _resume_identity(cfg, ctx)
    stale_events = [] if cfg.resume or not main else sorted(out.glob("events.out.tfevents.*"))
    p = _resume(cfg, ctx, model, spec, optimizer, scheduler, identity) if cfg.resume else _Progress()

    distributed.barrier()  # every rank has checked --output before rank 0 writes to it
    writer = tb.create_writer(out, purge_step=p.num_updates + 1 if cfg.resume else None)
    writer.add_custom_scalars(tb.runs.TRAIN_LAYOUT)
    try:
        result = _train_epochs(cfg, ctx, model, trained, optimizer, scheduler, loss_fn, writer, p, identity,
                               reference)
    finally:
        writer.flush()  # closed once the run's graph and HParams session are logged too
    if result is None:  # nothing left to train (resumed a finished run)
        result = engine.evaluate(model, ctx.loaders["test"], device, per_class=True)

    metrics = {
        "top1": result["top1"], "top5": result["top5"], "loss": result["loss"],
        "params": count_params(model), "flops": count_flops(model, spec.input_size),
        "wall_time_s": round(p.wall_time, 3), "epochs": cfg.epochs if p.start_epoch <= math.ceil(cfg.epochs) else p.start_epoch,
        "per_class_recall": result["per_class_recall"],
        "train_loss": p.history[-1]["train_loss"] if p.history else None,
        "skipped_steps": p.nan_stats["skipped"],
        **{k.split("/")[-1]: v for k, v in (reference or {}).items()},
        **(extra_metrics or {}),
    }
    if not main:
        return {**metrics, "run_dir": str(out)}
    paths = _write_run(cfg, ctx, model, spec, metrics, writer, p.num_updates, stale_events)
    _print_summary(cfg, ctx, spec, metrics, paths)
    return {**metrics, "run_dir": str(out)}
