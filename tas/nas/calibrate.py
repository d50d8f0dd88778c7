"""BatchNorm re-estimation: the running statistics of the one network a model computes now
(the supernet in hard mode, a slim network) before it is evaluated or materialised."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, loader: Any, device: torch.device | str, batches: int = 20,
                   seed: int | None = None) -> None:
    """Re-estimate BatchNorm running statistics of ``model``'s current (hard-mode) network.

    In search mode every per-candidate BN sees interpolated mixtures, so its running statistics do
    not describe the single architecture hard mode computes; a few forward passes fix that before
    it is evaluated or materialised (standard in one-shot NAS).

    ``seed``: first reset torch's RNG and the loader's own generator (a shuffling loader's, which
    advances with every pass) to it, so that networks compared with the same seed are calibrated on
    the same batches and augmentation, whatever was drawn from the loader before.
    """
    if seed is not None:
        torch.manual_seed(seed)
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    was_training = model.training
    model.train()
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x.to(device))
    model.train(was_training)
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum
