"""Slicing dense layers to kept channels: the one implementation the search and the materialiser share.

:func:`slice_conv`, :func:`slice_bn` and :func:`slice_linear` build the dense layers of a slim
network; the search wrappers (:mod:`tas.nas.ops`) compute through :func:`conv_weight`,
:func:`conv_view` and :func:`take_channels` on every step, which is what makes the supernet's hard
mode and the slim network one function. A conv runs through its class's own forward in both
(:func:`conv_view`), so its padding rule (a ``padding_mode``, timm's dynamic TF "same" padding) is
kept.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from timm.layers import Conv2dSame

__all__ = ["SLICEABLE_CONVS", "take_channels", "conv_weight", "conv_view", "slice_conv", "slice_bn", "slice_linear",
           "fold_scale"]


#: Conv classes :func:`conv_view` (so the wrappers and :func:`slice_conv`) slice exactly: their
#: forward convolves the input with their own weight, after a padding rule that depends only on the
#: input's size (a static ``padding``/``padding_mode``, or timm's dynamic TF "same" padding).
SLICEABLE_CONVS = (nn.Conv2d, Conv2dSame)


def take_channels(t: torch.Tensor, idx: torch.Tensor | None, dim: int) -> torch.Tensor:
    """``t`` restricted to the indices ``idx`` (ascending, distinct) along ``dim``; all of it for ``None``."""
    if idx is None or idx.numel() == t.shape[dim]:
        return t
    n = idx.numel()
    # Selections are ascending and distinct, so first 0 and last n-1 means channels 0..n-1: a view
    # (prefix selection, every TAS search step) whose backward is cheaper than index_select's scatter.
    # (Checked on CPU only: on an accelerator the two reads would synchronise every layer.)
    if n and idx.device.type == "cpu" and int(idx[0]) == 0 and int(idx[-1]) == n - 1:
        return t.narrow(dim, 0, n)
    return t.index_select(dim, idx)


def conv_weight(conv: nn.Conv2d, in_idx: torch.Tensor | None, out_idx: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(weight, bias, groups)`` of ``conv`` restricted to the given input/output channels.

    A depthwise conv keeps groups == channels; a grouped conv keeps its group count and, since
    every conv group keeps the same local positions, takes its input slice from the first group's
    kept channels.
    """
    w, b, groups = conv.weight, conv.bias, conv.groups
    if groups == 1:
        w = take_channels(take_channels(w, out_idx, 0), in_idx, 1)
    elif groups == conv.in_channels == conv.out_channels:  # depthwise
        idx = out_idx if out_idx is not None else in_idx
        w = take_channels(w, idx, 0)
        groups = w.shape[0]
    else:
        w = take_channels(w, out_idx, 0)
        if in_idx is not None and in_idx.numel() != conv.in_channels:
            per_group = in_idx.numel() // groups
            w = w.index_select(1, in_idx[:per_group])
    if b is not None:
        b = take_channels(b, out_idx, 0)
    return w, b, groups


def conv_view(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> nn.Conv2d:
    """``conv`` seen with other weights: an object of its class holding ``weight``, ``bias`` and
    ``groups`` and sharing everything else with ``conv`` (no tensor is copied).

    Its ``forward`` is the class's own, so it keeps the conv's padding rule whatever it is: a
    ``padding_mode``, or the dynamic TF "same" padding of timm's ``Conv2dSame``, which pads each
    input by an amount computed from its size, the kernel and the stride. That rule depends on
    neither the channel count nor the weights' values, so slicing channels commutes with it; the
    search wrappers and the slim layers both run through here, which keeps them equal. Only the
    classes of :data:`SLICEABLE_CONVS` are known to behave so (a conv whose forward transforms its
    weight, e.g. weight standardisation, would not slice exactly).
    """
    view = object.__new__(type(conv))
    view.__dict__.update(conv.__dict__)
    view.__dict__.update(_parameters={"weight": weight, "bias": bias}, groups=groups,
                         in_channels=weight.shape[1] * groups, out_channels=weight.shape[0])
    return view


def slice_conv(conv: nn.Conv2d, in_idx: torch.Tensor | None, out_idx: torch.Tensor | None) -> nn.Conv2d:
    """A dense copy of ``conv`` keeping only the given input and output channels.

    The copy is of the same class with the same configuration (a ``Conv2dSame`` stays a
    ``Conv2dSame``), and owns its parameters, hooks and submodules.
    """
    w, b, groups = conv_weight(conv, in_idx, out_idx)
    w = nn.Parameter(w.detach().clone())
    b = nn.Parameter(b.detach().clone()) if b is not None else None
    # The memo hands the fresh parameters through as they are; everything else is copied.
    memo = {id(p): p for p in (w, b) if p is not None}
    return copy.deepcopy(conv_view(conv, w, b, groups), memo)


def slice_bn(bn: nn.BatchNorm2d, idx: torch.Tensor | None) -> nn.BatchNorm2d:
    """A copy of ``bn`` keeping channels ``idx`` (affine parameters and running statistics)."""
    # A deep copy keeps the class and whatever it carries beyond the statistics (the fused
    # activation/drop of timm's BatchNormAct2d, eps, momentum, num_batches_tracked); only the
    # per-channel tensors are replaced by their kept channels.
    new = copy.deepcopy(bn)
    new.num_features = bn.num_features if idx is None else idx.numel()
    with torch.no_grad():
        for name in ("weight", "bias"):
            src = getattr(bn, name, None)
            if src is not None:
                setattr(new, name, nn.Parameter(take_channels(src, idx, 0).detach().clone(), requires_grad=src.requires_grad))
        for name in ("running_mean", "running_var"):
            src = getattr(bn, name, None)
            if src is not None:
                setattr(new, name, take_channels(src, idx, 0).detach().clone())
    return new.train(bn.training)


@torch.no_grad()
def fold_scale(layer: nn.Module, scale: torch.Tensor | None) -> nn.Module:
    """Multiply a dense conv's or BN's output channels by ``scale``, in its parameters (in place).

    For a BN that is ``γ·s`` and ``β·s`` (a BN without affine parameters gets them), which scales
    the normalised output before any fused activation; for a conv, each filter and its bias.
    """
    if scale is None:
        return layer
    s = scale.detach()
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        if layer.weight is None:
            layer.weight = nn.Parameter(torch.ones_like(s))
            layer.bias = nn.Parameter(torch.zeros_like(s))
            layer.affine = True
        layer.weight.mul_(s)
        layer.bias.mul_(s)
    else:
        layer.weight.mul_(s.view(-1, *[1] * (layer.weight.dim() - 1)))
        if layer.bias is not None:
            layer.bias.mul_(s)
    return layer


def slice_linear(fc: nn.Linear, in_idx: torch.Tensor | None) -> nn.Linear:
    """A copy of the classifier ``fc`` reading only input features ``in_idx``."""
    w = take_channels(fc.weight, in_idx, 1)
    new = nn.Linear(w.shape[1], w.shape[0], bias=fc.bias is not None, device=w.device, dtype=w.dtype)
    new.train(fc.training)
    with torch.no_grad():
        new.weight.copy_(w)
        if fc.bias is not None:
            new.bias.copy_(fc.bias)
    return new
