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

A group with SA++ attention multiplies its channels by :meth:`~tas.supernet.GroupState.scale` in
both modes, where its BN's affine output leaves the BN (before a fused activation; on the conv's
output for a group no BN writes). The dense layers fold that multiplier into the BN's γ and β (or
the conv's filters and bias): exact for any activation, so hard mode, search mode with a single
candidate and the slim network are one function.

:func:`slice_conv`, :func:`slice_bn` and :func:`slice_linear` build those dense layers; the wrappers
and the materialiser share them, which is what makes hard mode and the slim network equal. A conv
runs through its class's own forward in both (:func:`conv_view`), so its padding rule (a
``padding_mode``, timm's dynamic TF "same" padding) is kept.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Conv2dSame

from . import distributed
from .interp import channel_interp

if TYPE_CHECKING:  # pragma: no cover
    from .supernet import GroupState

__all__ = ["SLICEABLE_CONVS", "mix_fragments", "batch_norm_at", "SearchConv", "SearchBN", "SearchLinear", "SearchStage", "slice_conv", "slice_bn", "slice_linear",
           "conv_weight", "conv_view", "fold_scale"]


#: Conv classes :func:`conv_view` (so the wrappers and :func:`slice_conv`) slice exactly: their
#: forward convolves the input with their own weight, after a padding rule that depends only on the
#: input's size (a static ``padding``/``padding_mode``, or timm's dynamic TF "same" padding).
SLICEABLE_CONVS = (nn.Conv2d, Conv2dSame)


def _take(t: torch.Tensor, idx: torch.Tensor | None, dim: int) -> torch.Tensor:
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
                setattr(new, name, nn.Parameter(_take(src, idx, 0).detach().clone(), requires_grad=src.requires_grad))
        for name in ("running_mean", "running_var"):
            src = getattr(bn, name, None)
            if src is not None:
                setattr(new, name, _take(src, idx, 0).detach().clone())
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
    w = _take(fc.weight, in_idx, 1)
    new = nn.Linear(w.shape[1], w.shape[0], bias=fc.bias is not None, device=w.device, dtype=w.dtype)
    new.train(fc.training)
    with torch.no_grad():
        new.weight.copy_(w)
        if fc.bias is not None:
            new.bias.copy_(fc.bias)
    return new


class SearchConv(nn.Module):
    """A conv whose input and/or output channels follow channel groups."""

    def __init__(self, conv: nn.Conv2d, in_group: GroupState | None, out_group: GroupState | None,
                 mix: bool = False) -> None:
        super().__init__()
        self.conv = conv
        self.in_group = [in_group]  # lists: the states are shared, not submodules of this layer
        self.out_group = [out_group]
        # A group no BN writes (e.g. MobileNetV3's head conv) mixes its fragments here instead.
        self.mix = mix and out_group is not None

    def indices(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        ig, og = self.in_group[0], self.out_group[0]
        return (ig.active if ig is not None else None), (og.active if og is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The conv's own forward on the active channels' weights: its padding rule, as in the slim layer.
        y = conv_view(self.conv, *conv_weight(self.conv, *self.indices())).forward(x)
        g = self.out_group[0]
        if not self.mix:
            return y
        if g.fragments is not None:
            return mix_fragments(y, g, lambda j, t, chans: _scaled(t, g.scale_at(chans)))
        return _scaled(y, g.scale_at(g.active))

    def sliced(self) -> nn.Conv2d:
        conv = slice_conv(self.conv, *self.indices())
        g = self.out_group[0]
        return fold_scale(conv, g.scale_at(g.active)) if self.mix else conv


def _scaled(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return x if scale is None else x * scale.view(1, -1, 1, 1)


def batch_norm_at(bn: nn.BatchNorm2d, x: torch.Tensor, channels: Any, scale: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """``bn`` applied to ``x`` whose channels are ``channels`` of ``bn`` (None: all; int n: the first n).

    ``scale`` (one value per channel of ``x``) multiplies the normalised, affine output before a
    fused activation: the same as a BN whose γ and β were multiplied by it (:func:`fold_scale`).

    Running statistics are updated in place at those channels in training mode, so any subset of a
    full-width BN can be trained, recalibrated and later sliced out. A fused activation
    (timm's ``BatchNormAct2d``) is applied after. In a distributed run, training mode normalises
    with the global batch's statistics (:func:`tas.distributed.sync_batch_norm`).
    """
    sync = bn.training and distributed.is_active()
    if channels is None:
        if not sync and scale is None:
            return bn(x)
        channels = bn.num_features
    training = bn.training or not bn.track_running_stats
    factor = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    if isinstance(channels, int):  # views: the running stats are updated in place
        rm = bn.running_mean[:channels] if bn.running_mean is not None else None
        rv = bn.running_var[:channels] if bn.running_var is not None else None
        weight = bn.weight[:channels] if bn.affine else None
        bias = bn.bias[:channels] if bn.affine else None
    else:
        rm = bn.running_mean.index_select(0, channels) if bn.running_mean is not None else None
        rv = bn.running_var.index_select(0, channels) if bn.running_var is not None else None
        weight = bn.weight.index_select(0, channels) if bn.affine else None
        bias = bn.bias.index_select(0, channels) if bn.affine else None
    if training and distributed.is_active():
        y = distributed.sync_batch_norm(x, rm, rv, weight, bias, factor, bn.eps)
    else:
        y = F.batch_norm(x, rm, rv, weight, bias, training, factor, bn.eps)
    y = _scaled(y, scale)
    if not isinstance(channels, int) and bn.training and bn.track_running_stats:
        with torch.no_grad():  # the gathered copies were updated; write them back
            bn.running_mean.index_copy_(0, channels, rm)
            bn.running_var.index_copy_(0, channels, rv)
    if hasattr(bn, "act"):  # timm BatchNormAct2d: norm, then dropout and activation
        y = bn.act(bn.drop(y))
    return y


def mix_fragments(x: torch.Tensor, group: GroupState, fn) -> torch.Tensor:
    """TAS fragment mixture of ``x`` (the group's active channels) in search mode.

    ``fn(j, fragment, channels)`` transforms candidate ``j``'s channels (its own BN, or nothing);
    each result is stretched back to the active width by CWI, weighted and summed. (A group's SA++
    scale is applied inside ``fn``, at the fragment's own channels, so it stays attached to channel
    ids when CWI stretches a fragment.)
    """
    width = x.shape[1]
    out = None
    for j, pos, chans, weight in group.fragments:
        if pos is None:
            y = fn(j, x, chans)
        elif isinstance(pos, int):  # a prefix of the active channels: a view, no copy
            y = channel_interp(fn(j, x[:, :pos], chans), width)
        else:
            y = channel_interp(fn(j, x.index_select(1, pos), chans), width)
        if weight is not None:
            y = y * weight
        out = y if out is None else out + y
    return out


class SearchBN(nn.Module):
    """Per-candidate BatchNorms of one group, mixed with channel-wise interpolation in search mode.

    ``bns[j]`` is a full-width copy of the wrapped BN (normally the teacher's) used whenever
    candidate ``j`` is sampled, at that candidate's channels. Keeping every copy full width ties
    its statistics to channel ids rather than positions, so they stay right when a ranking
    (SA++ attention) changes which channels a candidate keeps.
    """

    def __init__(self, bn: nn.BatchNorm2d, group: GroupState) -> None:
        super().__init__()
        self.group = [group]
        self.bns = nn.ModuleList(slice_bn(bn, None) for _ in group.widths)

    def _hard(self) -> tuple[nn.BatchNorm2d, Any]:
        g = self.group[0]
        # A width outside the candidates (another method's arch) uses the full-width BN's statistics.
        j = g.hard_candidate if g.hard_candidate is not None else len(self.bns) - 1
        idx = g.active
        return self.bns[j], (None if idx.numel() == g.channels else idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group[0]
        if g.fragments is None:
            bn, idx = self._hard()
            return batch_norm_at(bn, x, idx, g.scale_at(g.active))
        return mix_fragments(x, g, lambda j, t, chans: batch_norm_at(self.bns[j], t, chans, g.scale_at(chans)))

    def sliced(self) -> nn.BatchNorm2d:
        bn, idx = self._hard()
        g = self.group[0]
        return fold_scale(slice_bn(bn, idx), g.scale_at(g.active))


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
