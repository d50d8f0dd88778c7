"""Counting FLOPs and parameters of a concrete network.

Convention, used everywhere in tas: **FLOPs are multiply-accumulates (MACs)** of convolutions and
linear layers, per image (batch 1), as in the TAS paper and most pruning literature (ResNet-56 on
32x32 = 125.5 MFLOPs). Normalisation, activations, pooling and additions are not counted. This is
exactly half of what :class:`torch.utils.flop_counter.FlopCounterMode` reports for the same model,
which the tests check.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["count_flops", "count_params", "layer_macs"]


def layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Multiply-accumulates one forward of ``module`` took for one sample (0 if not counted)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        per_out = module.weight.shape[1] * int(torch.tensor(module.weight.shape[2:]).prod())
        return int(out[0].numel()) * per_out
    if isinstance(module, nn.Linear):
        return int(out[0].numel()) * module.in_features
    return 0


@torch.no_grad()
def count_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """FLOPs (multiply-accumulates) of one forward pass of ``model`` on one ``input_size`` image.

    Args:
        model: any network built of ``nn.Conv*d`` and ``nn.Linear`` layers (others are free).
        input_size: ``(C, H, W)`` of one input.
    """
    total = 0

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += layer_macs(module, args[0], out)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
        model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
