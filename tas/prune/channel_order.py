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
* ``filters``: the L1 norm of each channel's filters in every conv that writes the group, summed
  unnormalised (Li et al. 2017, the ``l1`` baseline's criterion, :func:`filter_l1_scores`);
* ``bn``: ``|γ|`` of every BatchNorm that writes the group, each divided by its mean;
* ``taylor``: first-order Taylor estimate of the loss change when the channel is removed from the
  whole group: ``Σ_batches (Σ_BN γ·∂L/∂γ + β·∂L/∂β)²`` over the BNs that write it (Molchanov et al.
  2019, aggregated over the group), on a few training batches with the network in eval mode;
* ``task``: task-aware calibration (after "Frustratingly Easy Task-aware Pruning for Large Language
  Models", Tian et al. 2025, carried from weights to channels), see :func:`task_aware_scores`: an
  activation-aware importance (each reader's ``|W[:, c]|₁ · ‖x_c‖₂``, Wanda's ``|W|·‖X‖`` summed over
  the channel's weights) on general and on task calibration data; channels whose activation norm on
  the task data exceeds the general one by more than a threshold are *task-exclusive* and keep the
  task importance, the others are *shared* and average both (needs ``batches`` and ``task_batches``);
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
from ..errors import TasError
from .families import describe_model
from .graph import ModelGraph
from .. import distributed

__all__ = ["CRITERIA", "channel_scores", "filter_l1_scores", "importance_permutations", "permute_channels", "order_channels",
           "to_original", "order_teacher", "activation_importance", "task_aware_scores", "class_batches"]

#: channel-importance criteria accepted by :func:`channel_scores` (``none``: identity order)
CRITERIA = ("l1", "filters", "bn", "taylor", "task", "none")
#: default relative excess of a channel's task activation norm over its general one that makes it task-exclusive
EXCLUSIVE_THRESHOLD = 0.25

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


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


def filter_l1_scores(model: nn.Module, graph: ModelGraph) -> dict[str, torch.Tensor]:
    """Per group and channel: the L1 norm of every filter producing it, summed over its producers.

    A filter is one output channel of a conv whose ``out_group`` is the group: a residual stream's
    channel is written by several convs (each block's last conv, the downsample, an SE gate), and
    its score is the sum of their filters' ``Σ|W|``. A group no conv produces scores zeros.
    """
    scores = {n: torch.zeros(g.channels, dtype=torch.float64) for n, g in graph.groups.items()}
    for layer in graph.layers:
        if layer.kind == "conv" and layer.out_group is not None:
            w = model.get_submodule(layer.name).weight.detach()
            scores[layer.out_group] += w.abs().flatten(1).sum(1).double().cpu()
    return scores


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


def _readers(model: nn.Module, graph: ModelGraph) -> list[tuple[str, nn.Module]]:
    """``(group, layer)`` for every conv/linear that reads a group's channels as its input."""
    return [(l.in_group, model.get_submodule(l.name)) for l in graph.layers
            if l.kind in ("conv", "linear") and l.in_group is not None and l.in_group != l.out_group]


@torch.no_grad()
def activation_importance(model: nn.Module, graph: ModelGraph, batches: Batches
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per group and channel, on ``batches``: ``(importance, norm)``, both summed over the group's readers.

    For each conv/linear reading the group, with ``x_c`` its input channel ``c`` over every sample
    and position of the batches: ``norm = ‖x_c‖₂`` and ``importance = |W[:, c]|₁ · ‖x_c‖₂`` (Wanda's
    ``|W_ij|·‖X_j‖`` summed over the weights channel ``c`` feeds), each reader's values divided by
    their mean so every reader counts alike. The network runs in eval mode (the teacher's function).
    """
    readers = _readers(model, graph)
    sq = [None] * len(readers)

    def hook(i: int) -> Callable:
        def keep(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().float()
            s = x.pow(2).sum(dim=[d for d in range(x.dim()) if d != 1]).cpu()
            sq[i] = s if sq[i] is None else sq[i] + s
        return keep

    handles = [m.register_forward_pre_hook(hook(i)) for i, (_, m) in enumerate(readers)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for x, _ in batches:
            model(x.to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if any(s is None for s in sq):
        raise ValueError("activation importance needs at least one batch")
    importance = {n: torch.zeros(g.channels) for n, g in graph.groups.items()}
    norm = {n: torch.zeros(g.channels) for n, g in graph.groups.items()}
    for (group, m), s in zip(readers, sq):
        a = s.sqrt()
        importance[group] += _normalised(_input_l1(m).float().cpu() * a)
        norm[group] += a
    return importance, norm


def task_aware_scores(model: nn.Module, graph: ModelGraph, batches: Batches, task_batches: Batches,
                      threshold: float = EXCLUSIVE_THRESHOLD) -> dict[str, torch.Tensor]:
    """Task-aware channel importance: general and task calibration, shared / exclusive split, fused.

    With :func:`activation_importance` on the general data ``G`` (``I_G``, norms ``n_G``) and on the
    task data ``T`` (``I_T``, ``n_T``), each importance divided by its mean over the group so the two
    are on one scale: channel ``c`` is *task-exclusive* when ``n_T(c) > (1 + threshold) · n_G(c)``
    (the task drives it clearly harder than general data does) and scores ``I_T(c)``; a *shared*
    channel scores ``(I_G(c) + I_T(c)) / 2``. The norms are compared per sample (each divided by the
    square root of its data's sample count), so the two calibration sets may differ in size.
    """
    batches, task_batches = list(batches), list(task_batches)
    if not task_batches:
        raise ValueError("task-aware scores need task calibration batches (none of the task's classes seen)")
    ig, ng = activation_importance(model, graph, batches)
    it, nt = activation_importance(model, graph, task_batches)
    count_g = sum(len(y) for _, y in batches)
    count_t = sum(len(y) for _, y in task_batches)
    scores = {}
    for n in graph.groups:
        exclusive = nt[n] / count_t ** 0.5 > (1 + threshold) * ng[n] / count_g ** 0.5
        g, t = _normalised(ig[n]), _normalised(it[n])
        scores[n] = torch.where(exclusive, t, (g + t) / 2)
    return scores


def class_batches(loader: Iterable, classes: Iterable[int], batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``batches`` non-empty batches of ``loader`` restricted to the samples of ``classes``."""
    wanted = torch.tensor(sorted({int(c) for c in classes}))
    out = []
    for x, y in loader:
        keep = torch.isin(y, wanted)
        if keep.any():
            out.append((x[keep], y[keep]))
        if len(out) >= batches:
            break
    if not out:
        raise TasError(f"none of the task classes {wanted.tolist()} occurs in the calibration data")
    return out


def channel_scores(model: nn.Module, criterion: str, graph: ModelGraph | None = None,
                   batches: Batches | None = None,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                   task_batches: Batches | None = None, threshold: float = EXCLUSIVE_THRESHOLD,
                   ) -> dict[str, torch.Tensor]:
    """Importance of every channel of every group (higher = more important).

    Args:
        model: a network of a supported family, with trained weights.
        criterion: one of :data:`CRITERIA` (see the module docstring).
        graph: its :class:`ModelGraph` (default: described here).
        batches: ``(images, targets)`` pairs, needed by ``taylor`` and ``task`` (its general data).
        loss_fn: the loss ``taylor`` differentiates.
        task_batches, threshold: ``task``'s task calibration data and exclusivity threshold
            (:func:`task_aware_scores`).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown channel-order criterion {criterion!r} (one of {', '.join(CRITERIA)})")
    graph = graph or describe_model(model)
    if criterion == "none":
        return {n: torch.zeros(g.channels) for n, g in graph.groups.items()}
    if criterion == "l1":
        return _l1_scores(model, graph)
    if criterion == "filters":
        return filter_l1_scores(model, graph)
    if criterion == "bn":
        return _bn_scores(model, graph)
    if batches is None:
        raise ValueError(f"the {criterion} criterion needs batches of data")
    if criterion == "task":
        if task_batches is None:
            raise ValueError("the task criterion needs task calibration batches")
        return task_aware_scores(model, graph, batches, task_batches, threshold)
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
                  saved: Mapping[str, list[int]] | None = None,
                  task_classes: Iterable[int] | None = None) -> dict[str, list[int]]:
    """The search's entry point: order ``model`` in place and return the permutations as lists.

    ``saved`` (a resumed search's) is applied as it is rather than recomputed, so a resumed search
    works on exactly the network it started with. In a distributed run rank 0's order is
    broadcast (each rank's data batches are its own shard). ``taylor`` and ``task`` read ``batches``
    batches of ``loader``; ``task`` also as many batches of its ``task_classes`` samples.
    """
    graph = describe_model(model)
    if saved is None:
        data, task = None, None
        if criterion in ("taylor", "task"):
            if loader is None:
                raise ValueError(f"the {criterion} criterion needs a data loader")
            data = [b for i, b in zip(range(batches), loader)]
        if criterion == "task":
            if not task_classes:
                raise ValueError("the task criterion needs the task's classes")
            task = class_batches(loader, task_classes, batches)
        perms = importance_permutations(graph, channel_scores(model, criterion, graph, data, task_batches=task))
        saved = {n: p.tolist() for n, p in perms.items()}
        if distributed.is_active():
            saved = distributed.broadcast_object(saved if distributed.is_main() else None)
    permute_channels(model, saved, graph)
    return {n: list(map(int, p)) for n, p in saved.items()}
