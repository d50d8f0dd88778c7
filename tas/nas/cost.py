"""Exact and expected cost (FLOPs, params) of architectures in a search space, and the budget terms
(the TAS cost loss, the Lagrangian controller).

Every prunable layer contributes a few :class:`CostTerm`\\ s of the form
``coeff × Π (width of group g)`` (a conv's weight count is ``k_h·k_w/groups · C_in · C_out``; its
FLOPs are that times ``H_out·W_out``), times whether its block is kept. Summing the terms at an
architecture's widths gives its exact cost, equal to :func:`tas.count_flops` /
:func:`tas.count_params` of the materialised network. Replacing each width by its expectation under
the softmax of the width logits, and each block's presence by its probability under the depth
logits, gives the differentiable expected cost that drives the search.

FLOPs are multiply-accumulates (see :mod:`tas.prune.flops`).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ..prune.graph import ModelGraph

__all__ = ["CostTerm", "CostModel", "ExpectedCostTable", "build_cost_model", "cost_loss", "LagrangianCost", "COST_LOSSES"]

#: the architecture step's budget terms: the dual-ascent controller, or the paper's loss
COST_LOSSES = ("lagrangian", "tas")


@dataclass(frozen=True)
class CostTerm:
    coeff: float
    groups: tuple[str, ...]  # product of these groups' widths (a group may repeat)
    block: tuple[str, int] | None


def _conv_terms(conv: nn.Conv2d, layer, hw: int) -> tuple[list, list]:
    """(flops terms, params terms) of one conv at output spatial size ``hw``."""
    k = math.prod(conv.kernel_size)
    fixed, groups = 1.0, []
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if depthwise:
        if layer.out_group or layer.in_group:
            groups.append(layer.out_group or layer.in_group)
        else:
            fixed *= conv.out_channels
        coeff = float(k)
    else:
        coeff = k / conv.groups
        for g, c in ((layer.in_group, conv.in_channels), (layer.out_group, conv.out_channels)):
            if g:
                groups.append(g)
            else:
                fixed *= c
    weight = (coeff * fixed, tuple(groups))
    params = [weight]
    if conv.bias is not None:
        params.append((1.0, (layer.out_group,)) if layer.out_group else (float(conv.out_channels), ()))
    return [(weight[0] * hw, weight[1])], params


class CostModel:
    """FLOPs and params of every architecture of a supernet, exact or expected."""

    def __init__(self, flops: list[CostTerm], params: list[CostTerm], fixed_params: int = 0) -> None:
        self.terms = {"flops": flops, "params": params}
        self.fixed = {"flops": 0, "params": fixed_params}

    def exact(self, metric: str, widths: Mapping[str, int], depths: Mapping[str, int]) -> int:
        """Exact cost of the architecture with these group widths and stage depths."""
        total = float(self.fixed[metric])
        for t in self.terms[metric]:
            if t.block is not None and t.block[1] >= depths[t.block[0]]:
                continue
            total += t.coeff * math.prod(widths[g] for g in t.groups)
        return int(round(total))

    def expected(self, metric: str, width_probs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 depth_probs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Differentiable expected cost.

        Args:
            width_probs: per group ``(probs, widths)``: candidate probabilities and widths (float).
            depth_probs: per stage ``(probs, depths)``.
        """
        moments: dict[tuple[str, int], torch.Tensor] = {}

        def moment(g: str, p: int) -> torch.Tensor:
            if (g, p) not in moments:
                probs, w = width_probs[g]
                moments[(g, p)] = (probs * w.pow(p)).sum()
            return moments[(g, p)]

        keep: dict[tuple[str, int], torch.Tensor] = {}

        def kept(stage: str, b: int) -> torch.Tensor:
            if (stage, b) not in keep:
                probs, depths = depth_probs[stage]
                keep[(stage, b)] = probs[depths > b].sum()
            return keep[(stage, b)]

        total = torch.zeros(())
        for t in self.terms[metric]:
            v = torch.tensor(t.coeff)
            for g, p in Counter(t.groups).items():
                v = v * moment(g, p)
            if t.block is not None and t.block[1] > 0:
                v = v * kept(*t.block)
            total = total + v
        return total + self.fixed[metric]

    def table(self, metric: str, widths: Mapping[str, Sequence[int]], depths: Mapping[str, Sequence[int]]
              ) -> "ExpectedCostTable":
        """:meth:`expected` for these groups' candidate widths and stages' candidate depths, vectorised."""
        return ExpectedCostTable(self, metric, widths, depths)


class ExpectedCostTable:
    """:meth:`CostModel.expected` for one metric and one layout of candidates, as a dozen tensor ops.

    A search evaluates the expected cost at every architecture step; the term-by-term sum builds a
    few tensors per cost term (hundreds of tiny ops). Here the terms become index tensors, built
    once: a group's width moments ``E[w^p]`` are one product of the padded ``(groups, candidates)``
    probability matrix with the widths' powers, each term's product of moments one gather and
    ``prod``, and each term's block presence a masked sum of its stage's depth probabilities.

    Args:
        widths: candidate widths per group, in the order the rows of the probability matrix follow.
        depths: candidate depths per stage, likewise; stages without a row keep all their blocks.
    """

    def __init__(self, model: CostModel, metric: str, widths: Mapping[str, Sequence[int]],
                 depths: Mapping[str, Sequence[int]]) -> None:
        terms = model.terms[metric]
        self.fixed = float(model.fixed[metric])
        gidx = {g: i for i, g in enumerate(widths)}
        sidx = {s: i for i, s in enumerate(depths)}
        powers = max([max(Counter(t.groups).values(), default=1) for t in terms] + [1])
        cw = max([len(w) for w in widths.values()] + [1])
        w = torch.zeros(len(widths), cw, dtype=torch.float64)
        for i, ws in enumerate(widths.values()):
            w[i, :len(ws)] = torch.tensor([float(v) for v in ws], dtype=torch.float64)
        self.width_powers = torch.stack([w.pow(p) for p in range(1, powers + 1)], -1).float()  # (G, cw, P)
        one = len(widths) * powers  # the index of a constant 1 appended to the flattened moments
        factors = [[gidx[g] * powers + p - 1 for g, p in Counter(t.groups).items()] for t in terms]
        n = max([len(f) for f in factors] + [1])
        self.moment_index = torch.tensor([f + [one] * (n - len(f)) for f in factors], dtype=torch.long).view(len(terms), n)
        self.coeff = torch.tensor([t.coeff for t in terms], dtype=torch.float32)
        dw = max([len(d) for d in depths.values()] + [1])
        stage = torch.full((len(terms),), len(depths), dtype=torch.long)  # row len(depths): probability 1
        keep = torch.zeros(len(terms), dw)
        for k, t in enumerate(terms):
            if t.block is not None and t.block[1] > 0:
                stage[k] = sidx[t.block[0]]
                ds = list(depths[t.block[0]])
                keep[k, :len(ds)] = torch.tensor([float(d > t.block[1]) for d in ds])
            else:
                keep[k, 0] = 1.0
        self.stage_index, self.keep_mask = stage, keep

    def __call__(self, width_probs: torch.Tensor, depth_probs: torch.Tensor) -> torch.Tensor:
        """The expected cost at ``width_probs`` ``(groups, candidates)`` and ``depth_probs``
        ``(stages, candidates)``, each row a distribution zero-padded on the right."""
        moments = (width_probs.unsqueeze(-1) * self.width_powers).sum(1).flatten()
        factors = torch.cat([moments, moments.new_ones(1)])[self.moment_index].prod(-1)
        stage_probs = torch.cat([depth_probs, self.keep_mask.new_ones(1, depth_probs.shape[1])])
        kept = (stage_probs[self.stage_index] * self.keep_mask).sum(-1)
        return (self.coeff * factors * kept).sum() + self.fixed


@torch.no_grad()
def build_cost_model(model: nn.Module, graph: ModelGraph, input_size: Sequence[int]) -> CostModel:
    """Cost terms of ``model`` (the full network ``graph`` describes) at ``input_size``."""
    modules = dict(model.named_modules())
    out_hw: dict[str, int] = {}
    hooks = [modules[l.name].register_forward_hook(
        lambda m, i, o, n=l.name: out_hw.__setitem__(n, math.prod(o.shape[2:]) if o.dim() > 2 else 1))
        for l in graph.layers if l.kind == "conv"]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    flops, params = [], []
    counted: set[int] = set()
    for layer in graph.layers:
        m = modules[layer.name]
        counted.update(id(p) for p in m.parameters())
        if layer.kind == "conv":
            f, p = _conv_terms(m, layer, out_hw[layer.name])
        elif layer.kind == "bn":
            g = layer.out_group
            f, p = [], ([(2.0, (g,))] if g else [(2.0 * m.num_features, ())]) if m.affine else []
        elif layer.kind == "linear":
            g = layer.in_group
            f = [(float(m.out_features), (g,))]
            p = [(float(m.out_features), (g,))] + ([(float(m.out_features), ())] if m.bias is not None else [])
        elif layer.kind == "channel_conv":  # 1-d conv along the channel axis (ECA)
            k = m.weight.numel()
            f, p = [(float(k), (layer.out_group,))], [(float(k), ())]
        else:
            raise ValueError(f"unknown layer kind {layer.kind}")
        flops += [CostTerm(c, g, layer.block) for c, g in f]
        params += [CostTerm(c, g, layer.block) for c, g in p]
    # Parameters of modules no layer covers (e.g. a fixed-width head) are constant.
    fixed = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return CostModel(flops, params, fixed)


def budget_band(target: float, tolerance: float) -> tuple[float, float]:
    """The budget band ``[target·(1 − tolerance), target]`` a search's final cost must land in.

    The tolerance is a fraction of the *target*, so the band keeps its meaning at every ratio: at a
    0.5 target the default 0.1 accepts [0.45, 0.5] of the full cost (TAS's t = 0.05 of the full
    network), at 0.12 it accepts [0.108, 0.12]. A tolerance in units of the full cost (the paper's)
    would let a 0.12 search end a third under its budget and still count as on target.
    """
    return target * (1.0 - tolerance), target


def cost_loss(expected: torch.Tensor, current: float, target: float, tolerance: float) -> torch.Tensor:
    """The TAS cost loss around ``target`` (all in the same unit).

    ``+log E[cost]`` while the current argmax architecture costs more than ``target`` (shrink),
    ``-log E[cost]`` while it costs less than the band's bottom (:func:`budget_band`; grow), else 0.
    """
    low, high = budget_band(target, tolerance)
    if current > high:
        return torch.log(expected)
    if current < low:
        return -torch.log(expected)
    return expected.new_zeros(())


class LagrangianCost:
    """A budget kept by dual ascent: ``Σ_k λ1k·(ŝ_k − t) + λ2k·(ŝ_k − t)²`` (CoFi, Xia et al. 2022).

    Each ``ŝ_k`` is a cost ratio (expected cost over the full network's) the constraint holds on,
    and ``t`` the aim (the middle of the tolerance band). The architecture step minimises the term
    over α/β; :meth:`ascend` then *maximises* it over the multipliers by one gradient step,
    ``λ1k += lr·(ŝ_k − t)``, ``λ2k += lr·(ŝ_k − t)²``. λ1 is the price of cost: it grows while the
    ratio is too high, falls (and turns negative, a reward) while too low, and settles where the
    cross-entropy's pull balances it, so the ratio comes to rest on the aim instead of switching
    between ``±log E`` as the TAS loss does. λ2 only grows with the accumulated squared violation:
    the quadratic term's restoring force is proportional to the error, which damps the overshoot a
    pure integral controller (λ1 alone) would oscillate with.

    Attributes:
        aim: ``t``, a cost ratio.
        lr: the multipliers' ascent step.
        penalty: λ2's starting value: a quadratic penalty from the first step (the proportional
            part of the controller), where CoFi starts it at 0.
        lambdas: ``[[λ1k, λ2k] for each constraint k]``; part of a search's resumable state.
    """

    def __init__(self, aim: float, lr: float, constraints: int = 1, penalty: float = 0.0) -> None:
        self.aim, self.lr = float(aim), float(lr)
        self.lambdas = torch.zeros(constraints, 2, dtype=torch.float64)
        self.lambdas[:, 1] = penalty

    def loss(self, ratios: torch.Tensor) -> torch.Tensor:
        """The term added to the architecture loss (differentiable in ``ratios``, constant λ)."""
        e = ratios.reshape(-1) - self.aim
        lam = self.lambdas.to(e.dtype)
        return (lam[:, 0] * e + lam[:, 1] * e * e).sum()

    def ascend(self, ratios: Any) -> None:
        """One gradient-ascent step on the multipliers at the ratios the loss was taken at."""
        e = torch.as_tensor(ratios, dtype=torch.float64).reshape(-1) - self.aim
        self.lambdas += self.lr * torch.stack([e, e * e], dim=1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"lambdas": self.lambdas.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        lambdas = state["lambdas"].to(torch.float64)
        if lambdas.shape != self.lambdas.shape:
            raise ValueError(f"multipliers of shape {tuple(lambdas.shape)}, expected {tuple(self.lambdas.shape)}")
        self.lambdas = lambdas.clone()
