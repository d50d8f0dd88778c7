"""SynFlow (Tanaka et al., NeurIPS 2020), data-free, as a structured pruner on the TAS search space.

SynFlow scores a parameter by the *synaptic flow* through it: replace every parameter by its
absolute value, feed an all-ones input, and with ``R = Σ output`` score ``|∂R/∂θ ⊙ θ|``. No data
and no labels are used. Pruning is iterative so that a layer is not cut away by one greedy pass:
``rounds`` rounds (the paper uses 100; 20 here by default) follow the exponential schedule
``keep_k = ratio^(k / rounds)`` of the full cost, rescoring the masked network every round.

Structured, on the space:

* a channel's score is the sum of the scores of every filter that *produces* it (weight and bias
  of each conv whose ``out_group`` is the channel's group; several for a residual stream);
* the ranking is *global*: while the exact cost exceeds the round's target, the group whose next
  removable unit has the lowest mean channel score shrinks by one candidate (its width moves down
  its candidate list; the unit is its ``w_j − w_{j−1}`` lowest-scoring kept channels, the same
  local positions in every conv group of a grouped conv);
* removed channels are masked (their producers' filters and their BN's affine parameters are
  zeroed), so the next round scores the pruned network.

BatchNorm: the network runs in eval mode (as SynFlow's reference code does), so each BN is a fixed
per-channel affine map. Its running mean is set to zero and its scale ``|γ| / sqrt(var + eps)``
and shift ``|β|`` kept positive, so the linearised network is *positive*: every ReLU passes its
input and ``R`` is the path-norm polynomial the paper analyses (subtracting a running mean, as the
reference code's ``|μ|`` does, could drive activations negative and silence whole channels).
Everything runs in float64: path products over a deep network overflow float32.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..prune.arch import Arch
from ..errors import TasError
from ..nas.supernet import Supernet
from .base import register_baseline
from .magnitude import producers
from .shrink import WidthState

__all__ = ["linearize", "synflow_scores", "synflow_channel_scores"]


def linearize(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy of ``model`` with ``|θ|`` for every parameter, in eval mode, BN means zeroed (see above)."""
    net = copy.deepcopy(model).cpu().to(dtype).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
            p.requires_grad_(True)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.zero_()
                m.running_var.abs_()
    return net


def _param_scores(net: nn.Module, input_size: Sequence[int]) -> dict[str, torch.Tensor]:
    p0 = next(net.parameters())
    net.zero_grad(set_to_none=True)
    x = torch.ones(1, *[int(s) for s in input_size], dtype=p0.dtype, device=p0.device)
    r = net(x).sum()
    if not torch.isfinite(r):
        raise TasError(f"SynFlow: the synaptic flow R = {r.item()} is not finite for this network")
    r.backward()
    out = {}
    for name, p in net.named_parameters():
        out[name] = (p.grad * p).detach().abs() if p.grad is not None else torch.zeros_like(p.detach())
    net.zero_grad(set_to_none=True)
    return out


def synflow_scores(model: nn.Module, input_size: Sequence[int], dtype: torch.dtype = torch.float64
                   ) -> dict[str, torch.Tensor]:
    """SynFlow scores ``|∂R/∂θ ⊙ θ|`` of every parameter of ``model`` (by name), data-free.

    ``R`` is the sum of the outputs of :func:`linearize`\\ (``model``) for one all-ones input of
    ``input_size`` (without the batch dimension). ``model`` is not modified.
    """
    return _param_scores(linearize(model, dtype), input_size)


def synflow_channel_scores(param_scores: dict[str, torch.Tensor], graph) -> dict[str, torch.Tensor]:
    """Per group and channel: the summed scores of every filter (weight and bias) producing it."""
    out = {}
    for n, g in graph.groups.items():
        s = torch.zeros(g.channels, dtype=torch.float64)
        for name in producers(graph, n):
            s += param_scores[f"{name}.weight"].flatten(1).sum(1).double().cpu()
            if f"{name}.bias" in param_scores:
                s += param_scores[f"{name}.bias"].double().cpu()
        out[n] = s
    return out


class _Masker:
    """Zeroes a group's removed channels in the linearised network (producer filters, BN affine)."""

    def __init__(self, net: nn.Module, graph) -> None:
        self.params = dict(net.named_parameters())
        self.rows = {n: [f"{name}.{p}" for name in producers(graph, n) for p in ("weight", "bias")]
                     + [f"{l.name}.{p}" for l in graph.layers if l.kind == "bn" and l.out_group == n
                        for p in ("weight", "bias")]
                     for n in graph.groups}

    @torch.no_grad()
    def remove(self, group: str, channels: list[int]) -> None:
        idx = torch.tensor(channels, dtype=torch.long)
        for key in self.rows[group]:
            if key in self.params:
                self.params[key][idx] = 0


@register_baseline("synflow")
def synflow(supernet: Supernet, model: nn.Module, metric: str, ratio: float, seed: int, rounds: int = 20,
            dtype: torch.dtype = torch.float64, **_: Any) -> Arch:
    """Iterative, global, data-free SynFlow pruning to ``ratio`` of the full ``metric`` (module docstring)."""
    if not isinstance(rounds, int) or rounds < 1:
        raise TasError(f"SynFlow rounds must be a positive integer, got {rounds!r}")
    graph = supernet.graph
    net = linearize(model, dtype)
    masker = _Masker(net, graph)
    state = WidthState(supernet, metric)
    full = supernet.full[metric]
    history = []
    for k in range(1, rounds + 1):
        target = full * ratio ** (k / rounds)
        if state.cost > target:
            scores = synflow_channel_scores(_param_scores(net, supernet.input_size), graph)
            state.shrink_to(target, scores, on_remove=masker.remove)
        history.append(round(state.cost / full, 6))
    return supernet.make_arch(state.widths, state.depths, indices=state.indices(), method="synflow",
                              meta={"rounds": rounds, "round_ratios": history, "bn": "eval, running mean 0"})
