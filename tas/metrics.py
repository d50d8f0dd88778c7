"""Metrics beyond top-1 for comparing a pruned network with its original.

:func:`recall_distortion` measures whether pruning hurts the classes the original already found
hard more than the others, the *intensification* effect of "Recall Distortion in Neural Network
Pruning and the Undecayed Pruning Algorithm" (Good et al., NeurIPS 2022; after Hooker et al.,
"What do compressed deep neural networks forget?").

:func:`robustness` measures accuracy under common image corruptions (Gaussian noise, blur, contrast
loss, rotation) at three severities, the out-of-distribution question of "A Winning Hand: Compressing
Deep Networks Can Improve Out-Of-Distribution Robustness" (Diffenderfer et al., NeurIPS 2021), whose
corruptions follow ImageNet-C / CIFAR-10-C (Hendrycks & Dietterich, 2019).
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["CORRUPTIONS", "corrupt", "recall_distortion", "robustness"]

#: per corruption, its parameter at severities 1, 2, 3 (images in [0, 1]): the std of additive noise,
#: the Gaussian blur's sigma in pixels, the contrast factor (1 = unchanged), the rotation in degrees.
#: Milder than ImageNet-C's top severities: the networks here see 16-32 px images.
CORRUPTIONS: dict[str, tuple[float, float, float]] = {
    "gaussian_noise": (0.08, 0.12, 0.18),
    "blur": (0.5, 0.8, 1.2),
    "contrast": (0.4, 0.25, 0.15),
    "rotation": (10.0, 20.0, 30.0),
}


def _labels(x: Any, name: str) -> np.ndarray:
    """Class ids from a sequence, array or tensor of ids, or from ``N x K`` logits (argmax)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 2:
        a = a.argmax(1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be class ids (N,) or logits (N, K), got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer class ids")
        a = a.astype(np.int64)
    return a.astype(np.int64)


def recall_distortion(teacher_preds: Sequence[int] | Any, slim_preds: Sequence[int] | Any,
                      labels: Sequence[int] | Any, num_classes: int | None = None) -> dict[str, Any]:
    """Per-class recall of an original (teacher) and a pruned (slim) network, and the intensification test.

    Definitions (recalls and accuracies in percent; ``c`` ranges over the classes present in
    ``labels``, i.e. with at least one sample):

    * recall ``R_c = 100 · #{i : y_i = c and ŷ_i = c} / #{i : y_i = c}`` for each network;
    * accuracy ``A = 100 · #{i : ŷ_i = y_i} / N`` for each network;
    * relative change ``Δ_c = R_c(slim) / R_c(teacher) − 1`` (``None`` where ``R_c(teacher) = 0``:
      such a class cannot lose recall and is left out of the means);
    * *below* = classes with ``R_c(teacher) < A(teacher)``, *above* = the others
      (``R_c(teacher) ≥ A(teacher)``);
    * ``mean_change_below`` / ``mean_change_above``: the unweighted mean of ``Δ_c`` over each set
      (``None`` for an empty set);
    * ``intensification = mean_change_above − mean_change_below``: how much more, relatively, the
      teacher's hard classes lost;
    * ``intensified = intensification > 0``: pruning intensified the existing recall disparity (the
      effect the paper reports); ``False`` when either set is empty.

    Also returned for each class: ``normalized_change`` ``= (R_c(slim)/R_c(teacher)) / (A(slim)/A(teacher))``,
    above 1 when the class kept more of its recall than the network kept of its accuracy.

    Args:
        teacher_preds, slim_preds: predicted class ids (or logits, argmax taken) per sample.
        labels: true class ids.
        num_classes: number of classes (default: ``max id + 1`` over labels and predictions).

    Returns:
        ``classes``, ``teacher_recall``, ``slim_recall``, ``relative_change``, ``normalized_change``
        (lists aligned with ``classes``), ``teacher_accuracy``, ``slim_accuracy``, ``below``,
        ``above`` (class ids), ``mean_change_below``, ``mean_change_above``, ``intensification``,
        ``intensified``, ``num_samples``.
    """
    t, s, y = _labels(teacher_preds, "teacher_preds"), _labels(slim_preds, "slim_preds"), _labels(labels, "labels")
    if not (len(t) == len(s) == len(y)):
        raise ValueError(f"teacher_preds, slim_preds and labels differ in length ({len(t)}, {len(s)}, {len(y)})")
    if len(y) == 0:
        raise ValueError("recall_distortion needs at least one sample")
    k = num_classes if num_classes is not None else int(max(y.max(), t.max(), s.max())) + 1
    total = np.bincount(y, minlength=k)[:k]
    classes = [int(c) for c in np.flatnonzero(total)]

    def recalls(p: np.ndarray) -> list[float]:
        hit = np.bincount(y[p == y], minlength=k)[:k]
        return [100.0 * hit[c] / total[c] for c in classes]

    rt, rs = recalls(t), recalls(s)
    at, as_ = 100.0 * float(np.mean(t == y)), 100.0 * float(np.mean(s == y))
    change = [None if a == 0 else b / a - 1.0 for a, b in zip(rt, rs)]
    acc_ratio = as_ / at if at > 0 else None
    normalized = [None if d is None or not acc_ratio else (d + 1.0) / acc_ratio for d in change]
    below = [c for c, r in zip(classes, rt) if r < at]
    above = [c for c, r in zip(classes, rt) if r >= at]

    def mean_change(which: list[int]) -> float | None:
        vals = [d for c, d in zip(classes, change) if c in which and d is not None]
        return float(np.mean(vals)) if vals else None

    mb, ma = mean_change(below), mean_change(above)
    gap = None if mb is None or ma is None else ma - mb
    return {"classes": classes, "teacher_recall": rt, "slim_recall": rs, "relative_change": change,
            "normalized_change": normalized, "teacher_accuracy": at, "slim_accuracy": as_,
            "below": below, "above": above, "mean_change_below": mb, "mean_change_above": ma,
            "intensification": gap, "intensified": bool(gap is not None and gap > 0), "num_samples": int(len(y))}


def corrupt(images: torch.Tensor, corruption: str, severity: int,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """``images`` (``N x C x H x W`` in ``[0, 1]``) under ``corruption`` at ``severity`` (0: unchanged).

    ``gaussian_noise`` adds ``N(0, σ²)`` per pixel and clips to ``[0, 1]``, drawn from ``generator``
    (torchvision's ``GaussianNoise`` draws from the global RNG, which would make a result depend on
    whatever ran before); ``blur`` is torchvision's Gaussian blur (kernel ``2·⌈3σ⌉ + 1``);
    ``contrast`` torchvision's ``adjust_contrast`` (a blend with the image's mean grey level);
    ``rotation`` torchvision's ``rotate`` about the centre, bilinear, the corners filled with 0.
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r} (one of {', '.join(CORRUPTIONS)})")
    levels = CORRUPTIONS[corruption]
    if not isinstance(severity, int) or not 0 <= severity <= len(levels):
        raise ValueError(f"severity must be an integer in 0..{len(levels)}, got {severity!r}")
    if severity == 0:
        return images
    v = levels[severity - 1]
    if corruption == "gaussian_noise":
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
        return (images + v * noise).clamp(0, 1)
    if corruption == "blur":
        k = 2 * math.ceil(3 * v) + 1
        return TF.gaussian_blur(images, [k, k], [v, v])
    if corruption == "contrast":
        return TF.adjust_contrast(images, v)
    return TF.rotate(images, v, interpolation=TF.InterpolationMode.BILINEAR, fill=[0.0] * images.shape[1])


def _normalization(dataset: Dataset, mean: Sequence[float] | None,
                   std: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` as ``1 x C x 1 x 1`` tensors: given, or the dataset's own (looked up through subsets)."""
    d = dataset
    while mean is None and std is None and d is not None:
        if hasattr(d, "mean") and hasattr(d, "std"):
            mean, std = d.mean, d.std
        d = getattr(d, "dataset", None)
    if mean is None or std is None:
        raise ValueError("robustness needs the normalisation the dataset applies: pass mean= and std= "
                         "(mean=(0,), std=(1,) for images already in [0, 1])")
    return (torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1),
            torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))


def _cell_generator(seed: int, corruption: str, severity: int, batch: int) -> torch.Generator:
    # one stream per (corruption, severity, batch): a cell's noise does not depend on which others ran
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{corruption}/{severity}/{batch}".encode()))


@torch.no_grad()
def robustness(model: nn.Module, dataset: Dataset, corruptions: Iterable[str] | None = None,
               severities: Sequence[int] = (1, 2, 3), *, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, limit: int | None = None, batch_size: int = 256,
               seed: int = 0, device: str | torch.device | None = None) -> dict[str, Any]:
    """Top-1 of ``model`` on ``dataset`` clean and under each corruption at each severity.

    Every item of ``dataset`` is ``(image, label)`` with the image normalised as the model expects.
    Each batch is mapped back to ``[0, 1]`` (``x·std + mean``), corrupted (:func:`corrupt`),
    normalised again and classified. Deterministic given ``seed``: the noise of every
    (corruption, severity, batch) comes from its own seeded generator.

    Args:
        model: the classifier (put in eval mode for the measurement, its mode restored after).
        dataset: the evaluation images; ``limit``: only its first ``limit`` items.
        corruptions: names from :data:`CORRUPTIONS` (default: all four).
        severities: severities to measure, each in ``0..3`` (0 is the clean image).
        mean, std: the dataset's normalisation (default: its ``.mean`` / ``.std``, as
            :class:`~tas.data.TensorImageDataset` has, looked up through subsets).
        batch_size, device: evaluation batches and where the model runs (default: where its
            parameters are; the CPU for a model without any).
        seed: seeds the noise.

    Returns:
        ``clean`` (top-1 %, uncorrupted), ``accuracy`` (``{corruption: {severity: top-1 %}}``),
        ``mean_corrupted`` (the unweighted mean over every corruption and severity measured),
        ``relative`` (``mean_corrupted / clean``), ``num_samples``.
    """
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    for name in names:
        corrupt(torch.zeros(1, 1, 1, 1), name, 0)  # validates the name
    severities = [int(s) for s in severities]
    if not names or not severities:
        raise ValueError("robustness needs at least one corruption and one severity")
    m, s = _normalization(dataset, mean, std)
    if limit is not None:
        dataset = Subset(dataset, range(min(int(limit), len(dataset))))
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else "cpu"
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cells = [(n, v) for n in names for v in severities]
    hits = {c: 0 for c in [("clean", 0), *cells]}
    total = 0
    try:
        for b, (x, y) in enumerate(DataLoader(dataset, batch_size=batch_size, shuffle=False)):
            pixels = (x.float() * s + m).clamp(0, 1)
            y = y.to(device)
            total += len(y)
            for key in hits:
                img = pixels if key[0] == "clean" else corrupt(pixels, key[0], key[1], _cell_generator(seed, *key, b))
                hits[key] += int((model(((img - m) / s).to(device)).argmax(1) == y).sum())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("robustness needs at least one sample")
    acc = {n: {v: 100.0 * hits[(n, v)] / total for v in severities} for n in names}
    clean = 100.0 * hits[("clean", 0)] / total
    mean_corrupted = float(np.mean([acc[n][v] for n, v in cells]))
    return {"clean": clean, "accuracy": acc, "mean_corrupted": mean_corrupted,
            "relative": mean_corrupted / clean if clean > 0 else None, "num_samples": total}
