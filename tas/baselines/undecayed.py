"""Undecayed pruning (Good et al., "Recall Distortion in Neural Network Pruning and the Undecayed
Pruning Algorithm", NeurIPS 2022) carried to channels, as ``search.py --method undecayed``.

A network trained with weight decay minimises ``J(θ) = L(θ) + (λ/2)·‖θ‖²``. Gradient pruning scores a
weight by the first-order change of the objective when it is zeroed, ``|θ ⊙ ∇J| = |θ ⊙ (∇L + λθ)|``;
near a minimum of ``J`` that gradient vanishes and the score says nothing. Undecayed pruning drops
the decay term and scores ``|θ ⊙ ∇L|``: the first-order change of the *data* loss alone. Near a
minimum of ``J``, ``∇L ≈ −λθ`` and the score is ``≈ λθ²`` (magnitude pruning's order); away from
it the loss's own gradient weighs in. The paper proposes it to attenuate the intensification of
recall disparities that magnitude and gradient pruning show.

Structured, on the space: a channel's score is the sum of the scores of the weights and bias of
every filter producing it (as ``l1`` and ``synflow`` aggregate theirs), with ``∇L`` the gradient of
the mean cross-entropy over a few calibration batches, the network in eval mode (BN running
statistics: the teacher's function as trained). Widths are ``l1``'s uniform widths; each group
keeps its highest-scoring channels. ``weight_decay`` > 0 adds the decay term back (gradient
pruning, for comparison).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TasError
from ..nas.supernet import Supernet
from ..prune.arch import Arch
from ..prune.graph import ModelGraph
from .base import full_depths, register_baseline
from .magnitude import producers, top_channels, uniform_widths

__all__ = ["undecayed_channel_scores"]


def undecayed_channel_scores(model: nn.Module, graph: ModelGraph, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             weight_decay: float = 0.0,
                             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                             ) -> dict[str, torch.Tensor]:
    """Per group and channel: ``Σ |θ ⊙ (∇L + λθ)|`` over the weights and bias of its producing filters.

    ``∇L`` is the gradient of the mean of ``loss_fn`` over ``batches`` (each batch's loss weighted by
    its size), the network in eval mode; ``λ = weight_decay`` (0: undecayed pruning). ``model`` is
    not modified.
    """
    convs = {name: model.get_submodule(name) for n in graph.groups for name in producers(graph, n)}
    params = [p for m in convs.values() for p in (m.weight, m.bias) if p is not None]
    grads = [torch.zeros_like(p) for p in params]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x, y in batches:
            loss = loss_fn(model(x.to(device)), y.to(device)) * len(y)
            for acc, g in zip(grads, torch.autograd.grad(loss, params)):
                acc += g
            seen += len(y)
    finally:
        model.train(was_training)
    if not seen:
        raise TasError("undecayed pruning needs at least one calibration batch")
    grad = {id(p): g / seen for p, g in zip(params, grads)}

    def score(p: torch.Tensor | None) -> torch.Tensor:
        if p is None:
            return torch.zeros(())
        t = (p.detach() * (grad[id(p)] + weight_decay * p.detach())).abs()
        return t.flatten(1).sum(1) if t.dim() > 1 else t

    out = {}
    for n, g in graph.groups.items():
        s = torch.zeros(g.channels, dtype=torch.float64)
        for name in producers(graph, n):
            s += (score(convs[name].weight) + score(convs[name].bias)).double().cpu()
        out[n] = s
    return out


@register_baseline("undecayed", needs_data=True)
def undecayed(supernet: Supernet, model: nn.Module, metric: str, ratio: float, seed: int,
              batches: list | None = None, weight_decay: float = 0.0, **_: Any) -> Arch:
    """Uniform widths, each group keeping the channels of highest undecayed-pruning score."""
    if not batches:
        raise TasError("the undecayed baseline needs calibration batches")
    widths, r = uniform_widths(supernet, metric, ratio)
    scores = undecayed_channel_scores(model, supernet.graph, batches, weight_decay)
    indices = {n: top_channels(scores[n], widths[n], g.conv_groups) for n, g in supernet.graph.groups.items()}
    return supernet.make_arch(widths, full_depths(supernet), indices=indices, method="undecayed",
                              meta={"uniform_ratio": r, "weight_decay": weight_decay,
                                    "calibration_samples": sum(len(y) for _, y in batches)})
