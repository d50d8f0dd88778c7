"""Searchable building blocks and the slicing that turns them into dense layers.

Each wrapper replaces one prunable module of the wrapped network and reads the *current* channel
selection of the groups it touches (:class:`~tas.nas.groups.GroupState`), so the network's own
forward code runs unchanged in every mode:

* **search**: a group's active channels are those of the widest sampled candidate; each conv is
  computed once at that width (weights sliced, never K convolutions); each sampled candidate takes
  its channel fragment through its own BatchNorm, is stretched back to the active width by
  channel-wise interpolation and weighted by its Gumbel mixing weight.
* **hard**: the active channels are an architecture's kept channels; the module computes exactly
  what the materialised dense layer computes.

A group with SA++ attention multiplies its channels by :meth:`~tas.nas.groups.GroupState.scale` in
both modes, where its BN's affine output leaves the BN (before a fused activation; on the conv's
output for a group no BN writes). The dense layers fold that multiplier into the BN's γ and β (or
the conv's filters and bias): exact for any activation, so hard mode, search mode with a single
candidate and the slim network are one function.

:func:`~tas.prune.slicing.slice_conv`, :func:`~tas.prune.slicing.slice_bn` and :func:`~tas.prune.slicing.slice_linear` build those dense layers; the wrappers
and the materialiser share them, which is what makes hard mode and the slim network equal. A conv
runs through its class's own forward in both (:func:`~tas.prune.slicing.conv_view`), so its padding rule (a
``padding_mode``, timm's dynamic TF "same" padding) is kept.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..prune.slicing import conv_view, conv_weight, fold_scale, slice_bn, slice_conv, slice_linear, take_channels
from .groups import GroupState
from .interp import channel_interp, interp_matrix


__all__ = ["FUSED_BN_MAX_CHANNELS", "mix_fragments", "fusable", "fused_candidate_bn", "batch_norm_at", "SearchConv",
           "SearchBN", "SearchLinear", "SearchStage"]


#: Widest group (in channels) whose candidate BatchNorms :class:`SearchBN` fuses in search mode
#: (:func:`fused_candidate_bn`). The fused 1×1 mixing conv costs ``C²`` per pixel against the K BN
#: passes and CWI products it replaces, so it wins on narrow layers and loses on wide ones; the
#: crossing was measured per layer with ``benchmarks/fused_bn.py`` (docs/benchmarks_search_overhead.md).
FUSED_BN_MAX_CHANNELS = 64


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
    fused activation: the same as a BN whose γ and β were multiplied by it (:func:`~tas.prune.slicing.fold_scale`).

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


def fusable(bns: nn.ModuleList, group: GroupState) -> bool:
    """Whether :func:`fused_candidate_bn` computes this search-mode forward of ``bns`` exactly.

    It needs training-mode statistics (every candidate then normalises with the same batch mean and
    variance), plain affine BNs with one ``eps`` (a fused activation would sit between the affine
    and the mixing), prefix fragments (channels 0..n-1, every fragment under prefix selection) and
    one process (a distributed run normalises with the global batch's statistics). A single
    fragment has nothing to mix: its one BN pass is cheaper.
    """
    frags = group.fragments
    if frags is None or len(frags) < 2 or distributed.is_active():
        return False
    eps = bns[frags[0][0]].eps
    for j, pos, chans, _ in frags:
        bn = bns[j]
        if (not bn.training or not bn.track_running_stats or not bn.affine or hasattr(bn, "act")
                or bn.eps != eps or not (pos is None or isinstance(pos, int))
                or not (chans is None or isinstance(chans, int))):
            return False
    return True


def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> None:
    """``bn``'s running statistics at channels ``0..len(mean)-1`` after a training-mode batch,
    updated in place as ``F.batch_norm`` would (``var`` the unbiased batch variance)."""
    bn.num_batches_tracked.add_(1)
    f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    c = mean.numel()
    bn.running_mean[:c].mul_(1 - f).add_(mean, alpha=f)
    bn.running_var[:c].mul_(1 - f).add_(var, alpha=f)


def fused_candidate_bn(bns: nn.ModuleList, x: torch.Tensor, group: GroupState) -> torch.Tensor:
    """The TAS fragment mixture of ``group``'s candidate BNs as one BN and one 1×1 conv.

    In training mode every candidate BN normalises a channel with the same batch statistics, so the
    candidates differ only in their affine parameters and in whose running statistics they update:
    ``Σ_j w_j·CWI_j(s·(γ_j·x̂[:, :c_j] + β_j))`` is ``M·x̂ + b`` with the ``C×C`` matrix
    ``M = Σ_j w_j·I_j·diag(s·γ_j)`` (``I_j`` the ``C×c_j`` CWI matrix, ``s`` the SA++ scale) and
    ``b = Σ_j w_j·I_j·(s·β_j)``, both built from per-channel tensors. The K BN passes, CWI products
    and weighted sum become one affine-free ``batch_norm`` and one ``conv2d``; each candidate's
    running statistics are updated at its channels as :func:`batch_norm_at` does. Only for
    :func:`fusable` fragments; equal to :func:`mix_fragments` over :func:`batch_norm_at`.
    """
    width = x.shape[1]
    first = bns[group.fragments[0][0]]
    stats = x.new_zeros(2, width, dtype=first.running_mean.dtype)
    stats[1] = 1.0
    # momentum 1: the two buffers receive the batch mean and the unbiased batch variance
    xhat = F.batch_norm(x, stats[0], stats[1], None, None, True, 1.0, first.eps)
    mix, bias = None, None
    for j, pos, _, weight in group.fragments:
        bn = bns[j]
        c = width if pos is None else pos
        with torch.no_grad():
            _update_running_stats(bn, stats[0, :c], stats[1, :c])
        gamma, beta = bn.weight[:c], bn.bias[:c]
        scale = group.scale_at(c)
        if scale is not None:
            gamma, beta = gamma * scale, beta * scale
        if weight is not None:
            gamma, beta = gamma * weight, beta * weight
        if c == width:
            m, b = torch.diag(gamma), beta
        else:
            inter = interp_matrix(c, width, x.device, gamma.dtype)  # (width, c)
            m, b = F.pad(inter * gamma, (0, width - c)), inter @ beta
        mix = m if mix is None else mix + m
        bias = b if bias is None else bias + b
    return F.conv2d(xhat, mix.to(xhat.dtype)[:, :, None, None], bias.to(xhat.dtype))


class SearchBN(nn.Module):
    """Per-candidate BatchNorms of one group, mixed with channel-wise interpolation in search mode.

    ``bns[j]`` is a full-width copy of the wrapped BN (normally the teacher's) used whenever
    candidate ``j`` is sampled, at that candidate's channels. Keeping every copy full width ties
    its statistics to channel ids rather than positions, so they stay right when a ranking
    (SA++ attention) changes which channels a candidate keeps.

    ``fused`` (set for groups of at most :data:`FUSED_BN_MAX_CHANNELS` channels) computes a
    training-mode search forward with :func:`fused_candidate_bn` wherever it applies; it changes
    the cost, not the result.
    """

    def __init__(self, bn: nn.BatchNorm2d, group: GroupState) -> None:
        super().__init__()
        self.group = [group]
        self.bns = nn.ModuleList(slice_bn(bn, None) for _ in group.widths)
        self.fused = group.channels <= FUSED_BN_MAX_CHANNELS

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
        if self.fused and fusable(self.bns, g):
            return fused_candidate_bn(self.bns, x, g)
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
        return F.linear(x, take_channels(self.fc.weight, self.in_group[0].active, 1), self.fc.bias)

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
