"""Importance-ordered channels: permute a trained network so a width's prefix keeps its best channels.

TAS's prefix rule (a width keeps a group's first ``c`` channels) comes from training from scratch,
where the prefix order is learned. A trained teacher's channels are in arbitrary order, so every
narrow candidate would start from arbitrary channels. Before the supernet is built, each channel
group of the teacher is permuted, consistently in every layer that reads or writes it (the family
adapter's :class:`~tas.prune.graph.ModelGraph` says which), so its most important channels come first.
The permutation changes no output: residual adds, SE gates, activations and pooling act channel by
channel, and every channel-indexed weight of a group is a described layer (the materialiser relies
on the same completeness).

Criteria (:data:`CRITERIA`), each a score per channel summed over the group's layers:

* ``l1``: the L1 norm of each channel's weights in every conv/linear that writes the group (its
  filters) or reads it (its input slices), each layer's scores divided by their mean so that every
  layer counts alike (group L1, as structural pruners aggregate it);
* ``bn``: ``|γ|`` of every BatchNorm that writes the group, each divided by its mean;
* ``taylor``: first-order Taylor estimate of the loss change when the channel is removed from the
  whole group: ``Σ_batches (Σ_BN γ·∂L/∂γ + β·∂L/∂β)²`` over the BNs that write it (Molchanov et al.
  2019, aggregated over the group), on a few training batches with the network in eval mode;
* ``none``: keep the order (the permutation is the identity).

Grouped convolutions keep one *local* order shared by every conv group (scores summed over the conv
groups), because a grouped conv's kept channels are the same local positions in every group. Groups
an ECA module reads keep their order: its 1-d conv along the channel axis depends on which channels
are neighbours.

``perms[g][i]`` is the original channel at position ``i``; :func:`to_original` maps an architecture
found on the permuted network back to the original channel ids, so ``arch.json`` always refers to
the teacher as trained.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .arch import Arch
from .families import describe_model
from .graph import ModelGraph
from .. import distributed

__all__ = ["CRITERIA", "channel_scores", "importance_permutations", "permute_channels", "order_channels",
           "to_original", "order_teacher"]

#: channel-importance criteria accepted by :func:`channel_scores` (``none``: identity order)
CRITERIA = ("l1", "bn", "taylor", "none")


def _fixed_groups(graph: ModelGraph) -> set[str]:
    """Groups whose channel order matters to some layer (ECA's conv along the channel axis)."""
    return {g for l in graph.layers if l.kind == "channel_conv" for g in (l.in_group, l.out_group) if g}


def _normalised(v: torch.Tensor) -> torch.Tensor:
    mean = v.mean()
    return v / mean if mean > 0 else v


def _input_l1(m: nn.Module) -> torch.Tensor:
    """Per input channel L1 of a conv's or linear's weights (grouped convs: per input channel too)."""
    w = m.weight.detach().abs()
    if isinstance(m, nn.Linear):
        return w.sum(0)
    groups = m.groups
    if groups == m.in_channels == m.out_channels:  # depthwise: input c feeds output c only
        return w.flatten(1).sum(1)
    per_out = m.out_channels // groups
    # [G, out/G, in/G, k, k] -> one value per (conv group, local input position) = input channel
    return w.view(groups, per_out, *w.shape[1:]).sum(dim=(1, 3, 4)).reshape(-1)


def _l1_scores(model: nn.Module, graph: ModelGraph) -> dict[str, torch.Tensor]:
    scores = {n: torch.zeros(g.channels) for n, g in graph.groups.items()}
    for layer in graph.layers:
        if layer.kind not in ("conv", "linear"):
            continue
        m = model.get_submodule(layer.name)
        if layer.out_group is not None:
            scores[layer.out_group] += _normalised(m.weight.detach().abs().flatten(1).sum(1).float().cpu())
        if layer.in_group is not None and layer.in_group != layer.out_group:
            scores[layer.in_group] += _normalised(_input_l1(m).float().cpu())
    return scores


def _bn_layers(model: nn.Module, graph: ModelGraph) -> list[tuple[str, nn.Module]]:
    return [(l.out_group, model.get_submodule(l.name)) for l in graph.layers
            if l.kind == "bn" and l.out_group is not None and model.get_submodule(l.name).affine]


def _bn_scores(model: nn.Module, graph: ModelGraph) -> dict[str, torch.Tensor]:
    scores = {n: torch.zeros(g.channels) for n, g in graph.groups.items()}
    for group, bn in _bn_layers(model, graph):
        scores[group] += _normalised(bn.weight.detach().abs().float().cpu())
    return scores


def _taylor_scores(model: nn.Module, graph: ModelGraph, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    scores = {n: torch.zeros(g.channels) for n, g in graph.groups.items()}
    bns = _bn_layers(model, graph)
    params = [p for _, bn in bns for p in (bn.weight, bn.bias)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # the teacher's function as it is: running statistics, no updates
    seen = 0
    try:
        for x, y in batches:
            loss = loss_fn(model(x.to(device)), y.to(device))
            grads = torch.autograd.grad(loss, params)
            change = {n: torch.zeros(g.channels) for n, g in graph.groups.items()}
            for (group, bn), gw, gb in zip(bns, grads[0::2], grads[1::2]):
                # zeroing the channel's BN output (γ = β = 0) changes the loss by -(γ·∂L/∂γ + β·∂L/∂β)
                change[group] += (bn.weight.detach() * gw + bn.bias.detach() * gb).float().cpu()
            for n in scores:
                scores[n] += change[n].pow(2)
            seen += 1
    finally:
        model.train(was_training)
    if not seen:
        raise ValueError("taylor channel scores need at least one batch")
    return scores


def channel_scores(model: nn.Module, criterion: str, graph: ModelGraph | None = None,
                   batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                   ) -> dict[str, torch.Tensor]:
    """Importance of every channel of every group (higher = more important).

    Args:
        model: a network of a supported family, with trained weights.
        criterion: one of :data:`CRITERIA` (see the module docstring).
        graph: its :class:`ModelGraph` (default: described here).
        batches: ``(images, targets)`` pairs, needed by ``taylor``.
        loss_fn: the loss ``taylor`` differentiates.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown channel-order criterion {criterion!r} (one of {', '.join(CRITERIA)})")
    graph = graph or describe_model(model)
    if criterion == "none":
        return {n: torch.zeros(g.channels) for n, g in graph.groups.items()}
    if criterion == "l1":
        return _l1_scores(model, graph)
    if criterion == "bn":
        return _bn_scores(model, graph)
    if batches is None:
        raise ValueError("the taylor criterion needs batches of data")
    return _taylor_scores(model, graph, batches, loss_fn)


def importance_permutations(graph: ModelGraph, scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per group, the channels by descending score: ``perm[i]`` is the original channel at position i.

    Ties keep their original order. A conv-grouped group ranks *local* positions by their score
    summed over the conv groups and applies that one order inside every conv group. Groups an ECA
    module reads keep the identity.
    """
    fixed = _fixed_groups(graph)
    perms = {}
    for n, g in graph.groups.items():
        s = scores[n].detach().double().cpu()
        if n in fixed:
            perms[n] = torch.arange(g.channels)
            continue
        per = g.channels // g.conv_groups
        local = torch.argsort(s.view(g.conv_groups, per).sum(0), descending=True, stable=True)
        perms[n] = (torch.arange(g.conv_groups).unsqueeze(1) * per + local).reshape(-1)
    return perms


def _permute_conv(m: nn.Conv2d, p_in: torch.Tensor | None, p_out: torch.Tensor | None) -> None:
    w = m.weight
    if p_out is not None:
        w = w.index_select(0, p_out.to(w.device))
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    if p_in is not None and not depthwise:  # a depthwise conv's input c is its output c: done above
        per = m.in_channels // m.groups
        # a conv group reads its own slice of inputs; the shared local order permutes every slice
        w = w.index_select(1, (p_in[:per] % per).to(w.device))
    m.weight.copy_(w)
    if m.bias is not None and p_out is not None:
        m.bias.copy_(m.bias.index_select(0, p_out.to(m.bias.device)))


@torch.no_grad()
def permute_channels(model: nn.Module, perms: Mapping[str, torch.Tensor], graph: ModelGraph | None = None) -> None:
    """Reorder ``model``'s channels in place: group ``g``'s position ``i`` takes original channel ``perms[g][i]``.

    Every layer that writes a group permutes its output side, every layer that reads it its input
    side, so the network computes the same function. A conv-grouped group's permutation must keep
    each channel in its conv group with one local order shared by all (what
    :func:`importance_permutations` builds).
    """
    graph = graph or describe_model(model)
    perms = {n: torch.as_tensor(p, dtype=torch.long) for n, p in perms.items()}
    for n, g in graph.groups.items():
        p = perms.get(n)
        if p is None:
            continue
        if sorted(p.tolist()) != list(range(g.channels)):
            raise ValueError(f"the order of group {n} is not a permutation of its {g.channels} channels")
        per = g.channels // g.conv_groups
        shared = (torch.arange(g.conv_groups).unsqueeze(1) * per + p[:per]).reshape(-1)
        if g.conv_groups > 1 and (int(p[:per].max()) >= per or not torch.equal(p, shared)):
            raise ValueError(f"group {n} feeds a grouped conv: its order must apply one local order in every conv group")
        if n in _fixed_groups(graph) and not torch.equal(p, torch.arange(g.channels)):
            raise ValueError(f"group {n} is read by a channel conv (ECA), whose result depends on the channel order")
    for layer in graph.layers:
        m = model.get_submodule(layer.name)
        p_in, p_out = perms.get(layer.in_group), perms.get(layer.out_group)
        if layer.kind == "conv":
            _permute_conv(m, p_in, p_out)
        elif layer.kind == "bn" and p_out is not None:
            idx = p_out.to(m.running_mean.device if m.running_mean is not None else m.weight.device)
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                if t is not None:
                    t.copy_(t.index_select(0, idx))
        elif layer.kind == "linear" and p_in is not None:
            m.weight.copy_(m.weight.index_select(1, p_in.to(m.weight.device)))


def order_channels(model: nn.Module, criterion: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                   graph: ModelGraph | None = None) -> dict[str, torch.Tensor]:
    """Score ``model``'s channels by ``criterion``, permute them in place, return the permutations."""
    graph = graph or describe_model(model)
    perms = importance_permutations(graph, channel_scores(model, criterion, graph, batches))
    permute_channels(model, perms, graph)
    return perms


def to_original(arch: Arch, perms: Mapping[str, Any]) -> Arch:
    """``arch`` (indices into the permuted network) with indices of the original network's channels."""
    d = arch.to_dict()
    for n, g in d["groups"].items():
        p = perms[n]
        g["indices"] = sorted(int(p[i]) for i in g["indices"])
    return Arch.from_dict(d)


def order_teacher(model: nn.Module, criterion: str, loader: Iterable | None = None, batches: int = 8,
                  saved: Mapping[str, list[int]] | None = None) -> dict[str, list[int]]:
    """The search's entry point: order ``model`` in place and return the permutations as lists.

    ``saved`` (a resumed search's) is applied as it is rather than recomputed, so a resumed search
    works on exactly the network it started with. In a distributed run rank 0's order is
    broadcast (each rank's ``taylor`` batches are its own shard).
    """
    graph = describe_model(model)
    if saved is None:
        data = None
        if criterion == "taylor":
            if loader is None:
                raise ValueError("the taylor criterion needs a data loader")
            data = (b for i, b in zip(range(batches), loader))
        perms = importance_permutations(graph, channel_scores(model, criterion, graph, data))
        saved = {n: p.tolist() for n, p in perms.items()}
        if distributed.is_active():
            saved = distributed.broadcast_object(saved if distributed.is_main() else None)
    permute_channels(model, saved, graph)
    return {n: list(map(int, p)) for n, p in saved.items()}
