"""Training and evaluation loops shared by every stage and every model family.

The loops know nothing about what they train: the training loss is a callable
``loss_fn(model, images, targets) -> (loss, {name: scalar})`` so that plain cross-entropy (the
teacher), knowledge distillation (which needs the images for the teacher) and the search's
FLOPs-regularised loss all plug into :func:`train_one_epoch` unchanged.
"""
from __future__ import annotations

import itertools
import math
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..errors import DivergedError, TasError
from .amp import Precision
from tqdm.auto import tqdm
from torch.utils.data import DataLoader

__all__ = ["LossFn", "accuracy", "cross_entropy_loss", "evaluate", "train_one_epoch", "current_lr", "progress_bar",
           "skip_batches"]

#: ``loss_fn(model, images, targets) -> (loss, {term name: float or 0-d tensor})``
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, Mapping[str, Any]]"]


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    """The plain classification loss as a :data:`LossFn` (one term, ``ce``)."""

    def loss_fn(model: nn.Module, images: torch.Tensor, targets: torch.Tensor):
        loss = F.cross_entropy(model(images), targets, label_smoothing=label_smoothing)
        return loss, {"ce": loss.detach()}

    return loss_fn


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int]) -> list[int]:
    maxk = min(max(topk), logits.size(1))
    pred = logits.topk(maxk, dim=1).indices  # N x maxk
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, :min(k, maxk)].sum()) for k in topk]


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[float]:
    """Top-k accuracies in percent, one per ``k``; ``k`` is capped at the number of classes."""
    if logits.size(0) == 0:
        return [0.0 for _ in topk]
    return [100.0 * c / logits.size(0) for c in _topk_correct(logits, target, topk)]


def _to_device(batch: Any, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    images, targets = batch[0], batch[1]
    non_blocking = torch.device(device).type == "cuda"
    return images.to(device, non_blocking=non_blocking), targets.to(device, non_blocking=non_blocking)


def progress_bar(iterable: Iterable, progress: bool, **kwargs: Any):
    """``iterable`` under a tqdm bar on stderr, shown only when ``progress`` and stderr is a terminal;
    ``kwargs`` go to tqdm (``desc``, ``total``)."""
    return tqdm(iterable, disable=not progress or not sys.stderr.isatty(), leave=False,
                dynamic_ncols=True, **kwargs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    *,
    per_class: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy and loss of ``model`` over ``loader`` (eval mode; the mode is restored after).

    Args:
        loss_fn: ``loss_fn(logits, targets)`` returning the mean loss of a batch; defaults to
            cross-entropy.
        per_class: also return ``per_class_recall`` (percent of each class's samples classified
            correctly, indexed by class; ``None`` for classes absent from the loader).

    Returns:
        ``{"top1", "top5", "loss", "num_samples"}`` (percentages; top-5 is top-``min(5, classes)``),
        plus ``per_class_recall`` when asked.
    """
    loss_fn = loss_fn or F.cross_entropy
    was_training = model.training
    model.eval()
    n = 0
    top1 = top5 = 0
    loss_sum = 0.0
    per_hit = per_total = None
    try:
        for batch in progress_bar(loader, progress, desc="eval"):
            images, targets = _to_device(batch, device)
            logits = model(images)
            c1, c5 = _topk_correct(logits, targets, (1, 5))
            top1 += c1
            top5 += c5
            loss_sum += float(loss_fn(logits, targets)) * targets.size(0)
            n += targets.size(0)
            if per_class:
                k = logits.size(1)
                hit = logits.argmax(1).eq(targets)
                if per_hit is None:
                    per_hit = torch.zeros(k, dtype=torch.long, device=logits.device)
                    per_total = torch.zeros(k, dtype=torch.long, device=logits.device)
                per_total += torch.bincount(targets, minlength=k)[:k]
                per_hit += torch.bincount(targets[hit], minlength=k)[:k]
    finally:
        model.train(was_training)
    if getattr(getattr(loader, "batch_sampler", None), "world_size", 1) > 1:  # a rank's shard: total them
        k = int(distributed.all_reduce_max(0 if per_hit is None else per_hit.numel())) if per_class else 0
        hits = per_hit.tolist() if per_hit is not None else [0] * k
        totals = per_total.tolist() if per_total is not None else [0] * k
        n, top1, top5, loss_sum, *per = distributed.all_reduce_sum([n, top1, top5, loss_sum, *hits, *totals], device)
        if per_class:
            per_hit, per_total = torch.tensor(per[:k]).long(), torch.tensor(per[k:]).long()
        n, top1, top5 = int(n), int(top1), int(top5)
    if n == 0:
        raise TasError("cannot evaluate: the evaluation set is empty")
    out: dict[str, Any] = {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss_sum / n,
                           "num_samples": n}
    if per_class:
        out["per_class_recall"] = [None if int(t) == 0 else 100.0 * int(h) / int(t)
                                   for h, t in zip(per_hit.tolist(), per_total.tolist())]
    return out


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """Learning rate of the first parameter group."""
    return float(optimizer.param_groups[0]["lr"])


def epoch_lengths(epochs: float, steps_per_epoch: int) -> list[int]:
    """Steps in each epoch of a run ``epochs`` long: whole epochs of ``steps_per_epoch``, then, for a
    fraction, a last epoch of ``round(fraction · steps_per_epoch)`` steps (at least one). A run of
    3.5 epochs takes the first half of its fourth epoch's batches, in that epoch's seeded order."""
    whole = math.floor(epochs)
    lengths = [steps_per_epoch] * whole
    if epochs - whole > 1e-9:
        lengths.append(max(1, round((epochs - whole) * steps_per_epoch)))
    return lengths


def skip_batches(loader: Any, skip: int, length: int | None = None) -> Any:
    """``loader``'s current epoch from batch ``skip`` on, without loading the skipped batches.

    The epoch's batch order is fixed first (only the sampler runs, drawing from the loader's own
    seeded generator), and a plain loader over that list serves the batches. Every epoch goes this
    way, resumed or not, so a run resumed mid-epoch sees exactly the batches and augmentation
    random numbers of the run it continues; wrappers such as tqdm cannot touch the order.
    With ``length`` the epoch's batches repeat cyclically up to that many (the search cycles its
    val half alongside the train half).
    """
    if not hasattr(loader, "batch_sampler") or loader.batch_sampler is None:
        return loader

    # Start a real iterator so the loader's generator is consumed exactly as in an uninterrupted
    # epoch (it draws a worker base seed before the sampler shuffles), then take only its indices.
    batches = list(iter(loader)._sampler_iter)
    if length is not None and batches:
        batches = [batches[i % len(batches)] for i in range(length)]
    batches = batches[skip:]
    # A generator of its own: without one the new loader would draw its worker base seed from the
    # global RNG, shifting every augmentation after the resume point.
    return DataLoader(loader.dataset, batch_sampler=batches, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      generator=torch.Generator().manual_seed(0))


def _non_finite(value: float, terms: Mapping[str, Any] | None, where: str, optimizer: torch.optim.Optimizer,
                nan_policy: str, stats: dict[str, int] | None) -> None:
    """A step whose loss is not finite (on some rank): skipped and counted under ``--nan-policy
    skip``, else :class:`DivergedError` naming the step and the non-finite terms."""
    value = value if not math.isfinite(value) else float("nan")
    bad = [n for n, t in (terms or {}).items() if not math.isfinite(float(t))]
    if nan_policy == "skip":
        if stats is not None:
            stats["skipped"] = stats.get("skipped", 0) + 1
        print(f"warning: loss is {value} at {where}; step skipped (--nan-policy skip)", flush=True)
        optimizer.zero_grad(set_to_none=True)
        return
    raise DivergedError(f"training diverged: loss is {value} at {where}"
                        + (f" (non-finite term: {', '.join(bad)})" if bad else "")
                        + f", lr {current_lr(optimizer):.4g}; the last good checkpoint is kept. "
                          "Lower --lr, check the data, or pass --nan-policy skip")


def _log_step(writer: Any, value: float, terms: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer,
              num_updates: int) -> None:
    """``train/loss``, ``train/lr`` and the loss's extra terms (``train/<name>``) at ``num_updates``."""
    writer.add_scalar("train/loss", value, num_updates)
    writer.add_scalar("train/lr", current_lr(optimizer), num_updates)
    for name, term in (terms or {}).items():
        if name != "loss":
            writer.add_scalar(f"train/{name}", float(term), num_updates)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: LossFn,
    device: torch.device | str,
    scheduler: Any = None,
    epoch: int = 0,
    num_updates: int = 0,
    writer: Any = None,
    progress: bool = True,
    log_every: int = 10,
    start_step: int = 0,
    totals: tuple[float, int] = (0.0, 0),
    on_step: Callable[[int, int, float, int], None] | None = None,
    steps: int | None = None,
    nan_policy: str = "stop",
    stats: dict[str, int] | None = None,
    precision: Precision | None = None,
) -> tuple[float, int]:
    """One pass over ``loader``; returns ``(mean loss per sample, num_updates after the epoch)``.

    Args:
        loss_fn: see :data:`LossFn`; its extra terms are logged to TensorBoard as ``train/<name>``.
        scheduler: a timm scheduler, stepped with ``step_update(num_updates)`` after every update.
        epoch: only used for messages and the progress bar.
        num_updates: optimizer steps taken before this epoch (the TensorBoard step).
        writer: a ``SummaryWriter``; ``train/loss`` and ``train/lr`` every ``log_every`` updates.
        progress: show a tqdm bar (only when stderr is a terminal).
        start_step, totals: resume mid-epoch: skip the first ``start_step`` batches and continue the
            epoch's running ``(loss sum, sample count)``.
        on_step: called after every step as ``on_step(step_in_epoch, num_updates, loss_sum, count)``
            (the training loop saves its step checkpoints there).
        steps: end the epoch after this many of its batches (a fractional last epoch,
            :func:`epoch_lengths`); default all of them.
        nan_policy: ``stop`` raises :class:`DivergedError` on a non-finite loss; ``skip`` drops that
            step (no update) and counts it in ``stats["skipped"]``.
        precision: autocast, fp16 loss scaling and memory format of the step (:mod:`tas.train.amp`);
            default float32, the batches' own layout.

    Raises:
        DivergedError: the loss became NaN or infinite (names the epoch, step and term).
    """
    model.train()
    precision = precision or Precision(device=device)
    total, count = totals
    batches, left = skip_batches(loader, start_step), None if steps is None else max(0, steps - start_step)
    bar = progress_bar(batches if left is None else itertools.islice(batches, left), progress,
                       desc=f"epoch {epoch + 1}", total=left)
    for step, batch in enumerate(bar, start=start_step):
        images, targets = precision.images(batch[0], device), precision.images(batch[1], device)
        with precision.autocast():
            loss, terms = loss_fn(model, images, targets)
        value = float(loss.detach())
        # Distributed, the ranks decide together: one rank skipping a step DDP waits for would hang.
        if distributed.all_reduce_max(0.0 if math.isfinite(value) else 1.0) > 0:
            _non_finite(value, terms, f"epoch {epoch + 1}, step {step + 1}", optimizer, nan_policy, stats)
            continue
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(optimizer)
        precision.update()
        num_updates += 1
        if scheduler is not None:
            scheduler.step_update(num_updates=num_updates)
        bs = targets.size(0)
        total += value * bs
        count += bs
        if writer is not None and num_updates % max(1, log_every) == 0:
            _log_step(writer, value, terms, optimizer, num_updates)
        if step % 5 == 0:
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{current_lr(optimizer):.3g}", refresh=False)
        if on_step is not None:
            on_step(step + 1, num_updates, total, count)
    if hasattr(bar, "close"):
        bar.close()
    total, count = distributed.all_reduce_sum([total, count], device)
    return (total / count if count else float("nan")), num_updates
