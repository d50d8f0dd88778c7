"""Searchable building blocks and the slicing that turns them into dense layers.

Each wrapper replaces one prunable module of the wrapped network and reads the *current* channel
selection of the groups it touches (:class:`~tas.supernet.GroupState`), so the network's own
forward code runs unchanged in every mode:

* **search**: a group's active channels are those of the widest sampled candidate; each conv is
  computed once at that width (weights sliced, never K convolutions); each sampled candidate takes
  its channel fragment through its own BatchNorm, is stretched back to the active width by
  channel-wise interpolation and weighted by its Gumbel mixing weight.
* **hard**: the active channels are an architecture's kept channels; the module computes exactly
  what the materialised dense layer computes.

:func:`slice_conv`, :func:`slice_bn` and :func:`slice_linear` build those dense layers; the wrappers
and the materialiser share them, which is what makes hard mode and the slim network equal.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .interp import channel_interp

if TYPE_CHECKING:  # pragma: no cover
    from .supernet import GroupState

__all__ = ["SearchConv", "SearchBN", "SearchLinear", "SearchStage", "slice_conv", "slice_bn", "slice_linear",
           "conv_weight"]


def _take(t: torch.Tensor, idx: torch.Tensor | None, dim: int) -> torch.Tensor:
    if idx is None or idx.numel() == t.shape[dim]:
        return t
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
        w = _take(_take(w, out_idx, 0), in_idx, 1)
    elif groups == conv.in_channels == conv.out_channels:  # depthwise
        idx = out_idx if out_idx is not None else in_idx
        w = _take(w, idx, 0)
        groups = w.shape[0]
    else:
        w = _take(w, out_idx, 0)
        if in_idx is not None and in_idx.numel() != conv.in_channels:
            per_group = in_idx.numel() // groups
            w = w.index_select(1, in_idx[:per_group])
    if b is not None:
        b = _take(b, out_idx, 0)
    return w, b, groups


def slice_conv(conv: nn.Conv2d, in_idx: torch.Tensor | None, out_idx: torch.Tensor | None) -> nn.Conv2d:
    """A dense copy of ``conv`` keeping only the given input and output channels."""
    w, b, groups = conv_weight(conv, in_idx, out_idx)
    new = copy.copy(conv)  # keeps stride/padding/dilation/padding_mode and the class (e.g. Conv2dSame)
    new._parameters = {}
    new._buffers = dict(conv._buffers)
    new._modules = {}
    new.in_channels, new.out_channels, new.groups = w.shape[1] * groups, w.shape[0], groups
    new.weight = nn.Parameter(w.detach().clone())
    new.bias = nn.Parameter(b.detach().clone()) if b is not None else None
    return new


def slice_bn(bn: nn.BatchNorm2d, idx: torch.Tensor | None) -> nn.BatchNorm2d:
    """A copy of ``bn`` keeping channels ``idx`` (affine parameters and running statistics)."""
    n = bn.num_features if idx is None else idx.numel()
    new = type(bn)(n, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats).to(bn.weight.device if bn.affine else "cpu")
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(bn, name, None)
            if src is not None:
                getattr(new, name).copy_(_take(src, idx, 0))
        if bn.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def slice_linear(fc: nn.Linear, in_idx: torch.Tensor | None) -> nn.Linear:
    """A copy of the classifier ``fc`` reading only input features ``in_idx``."""
    w = _take(fc.weight, in_idx, 1)
    new = nn.Linear(w.shape[1], w.shape[0], bias=fc.bias is not None).to(w.device).train(fc.training)
    with torch.no_grad():
        new.weight.copy_(w)
        if fc.bias is not None:
            new.bias.copy_(fc.bias)
    return new


class SearchConv(nn.Module):
    """A conv whose input and/or output channels follow channel groups."""

    def __init__(self, conv: nn.Conv2d, in_group: GroupState | None, out_group: GroupState | None) -> None:
        super().__init__()
        self.conv = conv
        self.in_group = [in_group]  # lists: the states are shared, not submodules of this layer
        self.out_group = [out_group]

    def indices(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        ig, og = self.in_group[0], self.out_group[0]
        return (ig.active if ig is not None else None), (og.active if og is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b, groups = conv_weight(self.conv, *self.indices())
        c = self.conv
        if groups == c.groups:
            return c._conv_forward(x, w, b)  # honours the conv's padding mode
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, groups)

    def sliced(self) -> nn.Conv2d:
        return slice_conv(self.conv, *self.indices())


class SearchBN(nn.Module):
    """Per-candidate BatchNorms of one group, mixed with channel-wise interpolation in search mode.

    ``bns[j]`` normalises candidate ``j``'s channels; all start from the wrapped BN's statistics
    and affine parameters at those channels (normally the teacher's).
    """

    def __init__(self, bn: nn.BatchNorm2d, group: GroupState) -> None:
        super().__init__()
        self.group = [group]
        self.bns = nn.ModuleList(slice_bn(bn, group.candidate_indices(j)) for j in range(len(group.widths)))

    def hard_bn(self) -> nn.BatchNorm2d:
        """The BN of the current hard selection: its candidate's BN, or the full BN gathered."""
        g = self.group[0]
        j = g.hard_candidate
        if j is not None:
            return self.bns[j]
        # An arbitrary selection (another method's arch): gather from the full-width statistics,
        # whose channels are in original order.
        return slice_bn(self.bns[-1], g.active)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group[0]
        if g.fragments is None:
            return self.hard_bn()(x)
        width = x.shape[1]
        out = None
        for j, pos, weight in g.fragments:
            if pos is None:
                y = self.bns[j](x)
            elif isinstance(pos, int):  # a prefix of the active channels: a view, no copy
                y = channel_interp(self.bns[j](x[:, :pos]), width)
            else:
                y = channel_interp(self.bns[j](x.index_select(1, pos)), width)
            if weight is not None:
                y = y * weight
            out = y if out is None else out + y
        return out

    def sliced(self) -> nn.BatchNorm2d:
        return slice_bn(self.hard_bn(), None)


class SearchLinear(nn.Module):
    """The classifier, reading the active channels of the last stream group."""

    def __init__(self, fc: nn.Linear, in_group: GroupState) -> None:
        super().__init__()
        self.fc = fc
        self.in_group = [in_group]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _take(self.fc.weight, self.in_group[0].active, 1), self.fc.bias)

    def sliced(self) -> nn.Linear:
        return slice_linear(self.fc, self.in_group[0].active)


class SearchStage(nn.Sequential):
    """A stage whose depth is searched: a Gumbel mixture of the outputs after each candidate depth.

    ``depth`` set (hard mode) runs only the first ``depth`` blocks; ``mix`` set (search mode) is
    a ``{depth: weight}`` mapping and the stage returns ``Σ_d weight_d · F_d``. The residual stream
    has one width inside a stage, so the interpolation of the TAS formula is the identity here.
    """

    def __init__(self, blocks: nn.Sequential, name: str, depths: list[int]) -> None:
        super().__init__(*blocks)
        self.stage_name = name
        self.depths = depths
        self.depth: int | None = None
        self.mix: dict[int, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mix is None:
            for block in list(self)[: self.depth or len(self)]:
                x = block(x)
            return x
        out = None
        last = max(self.mix)
        for d, block in enumerate(list(self)[:last], start=1):
            x = block(x)
            if d in self.mix:
                y = self.mix[d] * x
                out = y if out is None else out + y
        return out
