"""How far each channel group can be pruned: the fundamental-limit estimate carried to channels.

Zhang, Zhang, Sun & Liu ("How Sparse Can We Prune A Deep Network: A Fundamental Limit
Perspective", NeurIPS 2024) ask when the set of sparse weight vectors still meets the loss
sublevel set ``S(ε) = {w : L(w) ≤ L(w*) + ε}``. Around a trained ``w*`` that set is the ellipsoid
``½ δᵀHδ ≤ ε`` with semi-axes ``r_i² = 2ε/λ_i`` (H the loss Hessian). Seen from a pruned point at
distance ``R = ‖w* − w_pruned‖`` (the norm of the removed weights), its squared Gaussian width
over the dimension, the largest pruned fraction the kinematic formula allows, is

    ρ(R) = (1/D) Σ_i r_i² / (r_i² + R²) = (1/D) Σ_i 2ε / (2ε + |λ_i|·R²)

(negative eigenvalues enter by magnitude, as in the authors' code), and a pruned fraction ``p`` is
feasible while ``p ≤ ρ(R(p))``; the limit is where the two cross. Weight magnitude enters through
``R``, sharpness through the ``λ_i``. The authors' ``ε`` is the spread of the training loss, the
standard deviation of the per-batch loss.

Carried to channel groups (:class:`~tas.graph.ModelGraph`), per group ``g``:

* ``w`` is every parameter tensor with a dimension indexed by ``g``'s channels (the filters and BN
  of the layers that write it, the input slices of the layers that read it), ``D`` their size;
  ``H`` is the loss Hessian restricted to them, everything else held at ``w*``;
* removing ``k`` of the ``C`` channels zeroes exactly ``k/C`` of those weights (each tensor has one
  dimension indexed by ``g``), so ``p = k/C``; the channels removed are those whose slices have the
  smallest norm (the closest structured point, as magnitude pruning is for weights), which gives
  ``R(k)``; a grouped conv's group removes the same local channel in every conv group;
* ``ρ`` comes from the spectrum of ``H``: stochastic Lanczos quadrature (Rademacher probes,
  Hessian-vector products by double backpropagation), as the paper estimates it, or the exact
  eigenvalues when ``D`` is small.

The estimate is the smallest width ``C − k`` before the first ``k`` at which ``k/C > ρ(R(k))``.
It treats the structured subspace like a generic one of the same dimension, which the paper's
formula assumes and channel structure does not guarantee: read it as where accuracy should start
to collapse, not as a bound.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .families import describe_model
from .graph import ModelGraph

__all__ = ["GroupLimit", "group_parameters", "channel_sq_norms", "lanczos", "prunable_fraction",
           "limit_width", "estimate_limits"]


@dataclass
class GroupLimit:
    """The estimate for one group.

    Attributes:
        group, channels: the group and its full width.
        params: ``D``, the weights indexed by its channels.
        epsilon: the loss tolerance ``ε``.
        curvature: ``Tr|H| / D``, the mean absolute curvature of the group's weights.
        width: the estimated smallest width (channels kept) before the loss leaves ``S(ε)``.
        curve: ``(width, pruned fraction p, ρ(R))`` for every width scanned, widest first.
    """

    group: str
    channels: int
    params: int
    epsilon: float
    curvature: float
    width: int
    curve: list[tuple[int, float, float]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.width / self.channels


def group_parameters(model: nn.Module, graph: ModelGraph) -> dict[str, list[tuple[str, int]]]:
    """Per group, ``(parameter name, dimension indexed by the group's channels)`` of every tensor
    with such a dimension, from the adapter's layer list (a depthwise conv counts once)."""
    out: dict[str, list[tuple[str, int]]] = {g: [] for g in graph.groups}
    for layer in graph.layers:
        m = model.get_submodule(layer.name)
        if layer.kind in ("conv", "bn", "linear") and layer.out_group is not None:
            for p in ("weight", "bias"):
                if getattr(m, p, None) is not None:
                    out[layer.out_group].append((f"{layer.name}.{p}", 0))
        if layer.kind in ("conv", "linear") and layer.in_group is not None and layer.in_group != layer.out_group:
            out[layer.in_group].append((f"{layer.name}.weight", 1))
    return out


def _slice_sq(model: nn.Module, name: str, dim: int, channels: int) -> torch.Tensor:
    """Squared norm of each channel's slice of parameter ``name`` along ``dim`` (``[channels]``)."""
    t = model.get_parameter(name).detach()
    if dim == 0:
        return t.reshape(t.shape[0], -1).square().sum(1)
    module = model.get_submodule(name.rsplit(".", 1)[0])
    groups = getattr(module, "groups", 1)
    if groups == 1:
        return t.transpose(0, 1).reshape(t.shape[1], -1).square().sum(1)
    # grouped conv: input channel c is local position c % per_in of conv group c // per_in
    per_out, per_in = t.shape[0] // groups, t.shape[1]
    return t.view(groups, per_out, per_in, -1).square().sum(dim=(1, 3)).reshape(groups * per_in)[:channels]


def channel_sq_norms(model: nn.Module, graph: ModelGraph) -> dict[str, torch.Tensor]:
    """Per group, the squared norm of each channel's weights over :func:`group_parameters`."""
    params = group_parameters(model, graph)
    return {g: sum(_slice_sq(model, n, d, grp.channels) for n, d in params[g])
            for g, grp in graph.groups.items()}


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, steps: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss quadrature of a symmetric operator along ``v0``: ``(nodes, weights)`` such that
    ``Σ_j weights_j f(nodes_j) ≈ v0ᵀ f(A) v0 / ‖v0‖²`` (exact for polynomials of degree < 2·steps,
    and for every ``f`` once ``steps`` reaches the dimension). Full reorthogonalisation."""
    basis = [v0 / v0.norm()]
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    w = matvec(basis[0])
    for j in range(steps):
        a = torch.dot(w, basis[j])
        alphas.append(a)
        w = w - a * basis[j] - (betas[-1] * basis[j - 1] if j > 0 else 0)
        for _ in range(2):  # twice is enough (Kahan/Parlett)
            w = w - torch.stack(basis).T @ (torch.stack(basis) @ w)
        b = w.norm()
        if j == steps - 1 or b <= 1e-10 * max(1.0, float(a.abs())):
            break
        betas.append(b)
        basis.append(w / b)
        w = matvec(basis[-1])
    t = torch.diag(torch.stack(alphas))
    if betas:
        off = torch.stack(betas[: len(alphas) - 1])
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    evals, evecs = torch.linalg.eigh(t)
    return evals, evecs[0].square()


def prunable_fraction(nodes: torch.Tensor, weights: torch.Tensor, epsilon: float, r: float) -> float:
    """``ρ(R) = Σ_j w_j · 2ε / (2ε + |λ_j| R²)``, with quadrature ``(nodes, weights)`` of the
    spectrum (rows = probes, averaged; weights sum to 1 per probe)."""
    f = 2 * epsilon / (2 * epsilon + nodes.abs() * r * r)
    return float((weights * f).sum(-1).mean())


def limit_width(sq_norms: torch.Tensor, conv_groups: int, rho: Callable[[float], float]
                ) -> tuple[int, list[tuple[int, float, float]]]:
    """The smallest width before ``k/C > ρ(R(k))``, removing the smallest-norm channels first (a
    grouped group: the smallest local positions summed over conv groups, ``conv_groups`` at a time)."""
    c = sq_norms.numel()
    units = sq_norms.view(conv_groups, -1).sum(0) if conv_groups > 1 else sq_norms
    removed = torch.cumsum(torch.sort(units.double()).values, 0)
    curve, width = [], c
    for k in range(1, units.numel()):
        w, p = c - k * conv_groups, k * conv_groups / c
        r = float(removed[k - 1].sqrt())
        curve.append((w, p, rho(r)))
        if p > curve[-1][2]:
            break
        width = w
    return width, curve


def _batch_losses(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [F.cross_entropy(model(x), y) for x, y in batches]


def _spectrum(grads: list[dict[str, torch.Tensor]], params: dict[str, torch.Tensor], names: list[str],
              steps: int, probes: int, exact_max_dim: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature ``(nodes, weights)`` of the Hessian restricted to ``names`` (``[probes, m]``)."""
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    dim = sum(sizes)
    dtype = params[names[0]].dtype

    def matvec(v: torch.Tensor) -> torch.Tensor:
        parts = [t.view(s) for t, s in zip(v.split(sizes), shapes)]
        total = torch.zeros_like(v)
        for g in grads:  # the mean loss's Hessian: average of the batches'
            dot = sum((g[n] * p).sum() for n, p in zip(names, parts))
            hv = torch.autograd.grad(dot, [params[n] for n in names], retain_graph=True)
            total += torch.cat([h.reshape(-1) for h in hv])
        return total / len(grads)

    if dim <= exact_max_dim:
        dense = torch.stack([matvec(e) for e in torch.eye(dim, dtype=dtype)])
        evals = torch.linalg.eigvalsh((dense + dense.T) / 2)
        return evals.view(1, -1), torch.full((1, dim), 1.0 / dim, dtype=dtype)
    out = []
    for _ in range(probes):
        v0 = (torch.randint(0, 2, (dim,), generator=gen) * 2 - 1).to(dtype)
        out.append(lanczos(matvec, v0, min(steps, dim)))
    # an early Lanczos breakdown gives fewer nodes: pad with zero weight
    nodes = torch.zeros(len(out), max(len(n) for n, _ in out), dtype=dtype)
    weights = torch.zeros_like(nodes)
    for i, (n, w) in enumerate(out):
        nodes[i, : len(n)], weights[i, : len(w)] = n, w
    return nodes, weights


def estimate_limits(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, steps: int = 20,
                    probes: int = 2, exact_max_dim: int = 512, seed: int = 0,
                    groups: Sequence[str] | None = None) -> dict[str, GroupLimit]:
    """The pruning-limit estimate of every channel group of ``model`` (see the module docstring).

    Args:
        model: a trained network of a supported family (eval mode is used; not changed).
        batches: ``(images, labels)`` calibration batches of its training data, at least two
            (``ε`` is the standard deviation of their mean losses).
        steps, probes: Lanczos steps and Rademacher probes of the quadrature.
        exact_max_dim: groups with at most this many weights get the exact eigenvalues instead.
        seed: seeds the probes.
        groups: only these groups (default: all).
    """
    batches = list(batches)
    if len(batches) < 2:
        raise ValueError("estimate_limits: needs at least two calibration batches (ε is their loss spread)")
    graph = describe_model(model)
    was_training = model.training
    model.eval()
    try:
        params = dict(model.named_parameters())
        wanted = list(groups) if groups is not None else list(graph.groups)
        tensors = group_parameters(model, graph)
        norms = channel_sq_norms(model, graph)
        involved = sorted({n for g in wanted for n, _ in tensors[g]})
        grads, losses = [], []
        for loss in _batch_losses(model, batches):
            g = torch.autograd.grad(loss, [params[n] for n in involved], create_graph=True)
            grads.append(dict(zip(involved, g)))
            losses.append(float(loss.detach()))
        epsilon = float(torch.tensor(losses, dtype=torch.float64).std())
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for name in wanted:
            names = list(dict.fromkeys(n for n, _ in tensors[name]))
            nodes, weights = _spectrum(grads, params, names, steps, probes, exact_max_dim, gen)
            nodes, weights = nodes.detach(), weights.detach()
            group = graph.groups[name]
            width, curve = limit_width(norms[name], group.conv_groups,
                                       lambda r: prunable_fraction(nodes, weights, epsilon, r))
            curvature = float((weights * nodes.abs()).sum(-1).mean())
            out[name] = GroupLimit(name, group.channels, sum(params[n].numel() for n in names), epsilon,
                                   curvature, width, curve)
        return out
    finally:
        model.train(was_training)
