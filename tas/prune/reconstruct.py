"""Layer-wise reconstruction of a slim network from its teacher (L-OBS carried to channels).

L-OBS (Dong, Chen & Pan, "Learning to Prune Deep Neural Networks via Layer-wise Optimal Brain
Surgeon", NeurIPS 2017) prunes each layer so that its output on the layer's inputs changes least,
a quadratic problem whose Hessian is the layer input's second moment ``XᵀX``. With whole input
channels removed, the best remaining weights of that layer have a closed form: the least-squares
fit of the layer's original output from its kept inputs. ``--init reconstruct`` does that for every
conv (and linear head) whose *input* channels were pruned::

    W* = argmin_W ‖X_slim W − Y_teacher‖² + λ‖W‖²     (per conv group; λ = ridge · mean diag(XᵀX))

* ``X_slim``: the unfolded inputs the *slim* network feeds the layer, on a few calibration batches,
  after every earlier layer was reconstructed. Using the slim network's own inputs (rather than the
  teacher's inputs restricted to the kept channels, as L-OBS's per-layer analysis does) lets each
  layer also absorb the error the earlier pruned layers left in its input, and it is what the layer
  sees at inference (ThiNet and He et al.'s channel pruning make the same choice).
* ``Y_teacher``: the teacher layer's output at the kept output channels, before BatchNorm, so the
  inherited BN statistics stay valid.

The layers are visited in execution order (found by one forward pass), both networks in eval mode.
Convolutions are unfolded through a copy of the conv itself holding one-hot kernels
(:func:`tas.prune.slicing.conv_view`), so any padding rule (timm's dynamic "same" padding included), stride,
dilation and grouping is reproduced exactly; a grouped conv is solved per conv group. The layers
to visit come from the family adapter's :class:`~tas.graph.ModelGraph`, nothing per model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from .arch import Arch
from .families import describe_model
from .graph import ModelGraph
from .slicing import conv_view

__all__ = ["reconstruct", "calibration_batches", "layers_to_reconstruct", "LayerFit"]


@dataclass
class LayerFit:
    """What reconstruction did to one layer: its output's mean squared error against the teacher's
    on the calibration data, with the inherited weights (``before``) and the fitted ones (``after``),
    each relative to the teacher output's mean square."""

    name: str
    before: float
    after: float


class _Captured(Exception):
    """Raised by a capture hook once it holds its tensor: the rest of the forward pass is not needed."""


def calibration_batches(loader: Iterable, batches: int) -> list[torch.Tensor]:
    """The images of the first ``batches`` batches of ``loader`` (``(images, labels)`` or images)."""
    out = []
    for batch in loader:
        if len(out) >= batches:
            break
        out.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
    return out


def layers_to_reconstruct(graph: ModelGraph, arch: Arch) -> list[str]:
    """Convs and linears (by the adapter's description) whose input group ``arch`` narrows."""
    def pruned(group: str | None) -> bool:
        return group is not None and arch.groups[group]["width"] < arch.groups[group]["channels"]

    return [l.name for l in graph.layers if l.kind in ("conv", "linear") and pruned(l.in_group)]


def _capture(model: nn.Module, name: str, x: torch.Tensor, output: bool) -> torch.Tensor:
    """Layer ``name``'s input (or output) when ``model`` runs on ``x``; the pass stops right there."""
    seen: list[torch.Tensor] = []

    def hook(_m, inputs, out):
        seen.append((out if output else inputs[0]).detach())
        raise _Captured

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"layer {name} did not run in the forward pass")
    return seen[0]


def _execution_order(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> list[str]:
    """``names`` in the order the forward pass runs them (layers that do not run are dropped)."""
    order: list[str] = []
    handles = [model.get_submodule(n).register_forward_hook(lambda *_a, n=n: order.append(n)) for n in names]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


def _patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The regression features of ``layer`` on input ``x``: ``[G, rows, d]`` per conv group.

    A conv's features are its receptive fields, taken by the conv's own forward with one-hot
    kernels (``d = C_in/G · k_h · k_w``, ordered like the flattened weight); a linear's are its input.
    """
    if isinstance(layer, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    g = layer.groups
    per_in, kh, kw = layer.weight.shape[1:]
    d = per_in * kh * kw
    eye = torch.eye(d, dtype=x.dtype, device=x.device).view(d, per_in, kh, kw).repeat(g, 1, 1, 1)
    p = conv_view(layer, eye, None, g)(x)  # [N, G·d, H', W']
    n, _, h, w = p.shape
    return p.view(n, g, d, h, w).permute(1, 0, 3, 4, 2).reshape(g, n * h * w, d)


def _targets(y: torch.Tensor, groups: int) -> torch.Tensor:
    """Teacher outputs ``[N, C_out(, H, W)]`` as ``[G, rows, C_out/G]``, conv group by conv group."""
    if y.dim() == 2:
        return y.unsqueeze(0)
    n, c, h, w = y.shape
    return y.view(n, groups, c // groups, h, w).permute(1, 0, 3, 4, 2).reshape(groups, n * h * w, c // groups)


def _weight_as_matrix(layer: nn.Module) -> torch.Tensor:
    """``[G, d(+1), C_out/G]``: the layer's weights (and bias as a last row) as regression coefficients."""
    g = getattr(layer, "groups", 1)
    w = layer.weight.detach().reshape(g, layer.weight.shape[0] // g, -1).transpose(1, 2)
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().view(g, 1, -1)], dim=1)
    return w


@torch.no_grad()
def _fit_layer(slim: nn.Module, teacher: nn.Module, name: str, out_idx: torch.Tensor | None,
               xs: Sequence[torch.Tensor], ridge: float) -> LayerFit:
    """Solve one layer's ridge least squares on ``xs`` and write the solution into ``slim``."""
    layer = slim.get_submodule(name)
    g = getattr(layer, "groups", 1)
    gram = rhs = None
    sq_y = sq_err = 0.0
    rows = 0
    w_old = _weight_as_matrix(layer).double()
    for x in xs:
        # float64 moments: XᵀX of ReLU features is badly conditioned, and float32 sums lose the
        # small directions the solve depends on (the forward passes, not these products, dominate).
        feats = _patches(layer, _capture(slim, name, x, output=False)).double()
        if layer.bias is not None:
            feats = torch.cat([feats, feats.new_ones(*feats.shape[:2], 1)], dim=2)
        y = _capture(teacher, name, x, output=True)
        y = _targets(y if out_idx is None else y.index_select(1, out_idx), g).double()
        ft = feats.transpose(1, 2)
        gram = ft @ feats + (0 if gram is None else gram)
        rhs = ft @ y + (0 if rhs is None else rhs)
        sq_y += float(y.square().sum())
        sq_err += float((feats @ w_old - y).square().sum())
        rows += y.shape[0] * y.shape[1] * y.shape[2]
    lam = ridge * gram.diagonal(dim1=1, dim2=2).mean(dim=1).view(g, 1, 1)
    w_new = _solve(gram, rhs, lam)
    # ‖Xw − y‖² from the accumulated moments: wᵀGw − 2wᵀB + ‖y‖² (no second pass over the data).
    err_new = float((w_new * (gram @ w_new)).sum() - 2 * (w_new * rhs).sum()) + sq_y
    _write_back(layer, w_new)
    scale = max(sq_y, 1e-30)
    return LayerFit(name, sq_err / scale, max(err_new, 0.0) / scale)


def _solve(gram: torch.Tensor, rhs: torch.Tensor, lam: torch.Tensor, rcond: float = 1e-12) -> torch.Tensor:
    """``(G + λI)⁻¹ B`` per conv group through the eigendecomposition of ``G``, directions with
    ``s + λ ≤ rcond · max`` dropped: with ``λ = 0`` that is the minimum-norm least-squares solution,
    which stays defined when a kept input channel is dead (always 0 after ReLU) or duplicated."""
    evals, evecs = torch.linalg.eigh(gram)
    shifted = evals + lam.view(-1, 1)
    keep = shifted > rcond * shifted.amax(dim=1, keepdim=True)
    inv = torch.where(keep, 1.0 / shifted.clamp(min=1e-300), torch.zeros_like(shifted))
    return evecs @ (inv.unsqueeze(-1) * (evecs.transpose(1, 2) @ rhs))


def _write_back(layer: nn.Module, w: torch.Tensor) -> None:
    """Store ``[G, d(+1), C_out/G]`` coefficients back as the layer's weight (and bias)."""
    if layer.bias is not None:
        layer.bias.copy_(w[:, -1, :].reshape(-1).to(layer.bias))
        w = w[:, :-1, :]
    layer.weight.copy_(w.transpose(1, 2).reshape(layer.weight.shape).to(layer.weight))


def reconstruct(slim: nn.Module, teacher: nn.Module, batches: Sequence[torch.Tensor], *, arch: Arch | None = None,
                ridge: float = 1e-3) -> list[LayerFit]:
    """Refit, in place, every conv/linear of ``slim`` whose input channels ``arch`` pruned, so its
    output on the calibration ``batches`` matches ``teacher``'s (see the module docstring).

    Args:
        slim: the slim network, e.g. ``tas.materialize(teacher, arch)`` (``--init inherit``).
        teacher: the network ``arch`` was pruned from; not changed.
        batches: calibration images (:func:`calibration_batches`), a few hundred to a few
            thousand are plenty: each layer has at most ``C_in·k·k`` unknowns per output channel.
        arch: the architecture (default: ``slim.tas_arch``, which :func:`tas.materialize` sets).
        ridge: Tikhonov weight relative to the mean diagonal of ``XᵀX`` (scale-free); it keeps the
            solve well posed when the kept inputs are collinear. 0 is plain least squares.

    Returns:
        One :class:`LayerFit` per refitted layer, in execution order.
    """
    arch = arch if arch is not None else getattr(slim, "tas_arch", None)
    if arch is None:
        raise ValueError("reconstruct: give arch=, this network does not carry its architecture")
    if not batches:
        raise ValueError("reconstruct: needs at least one calibration batch")
    graph = describe_model(teacher)
    device = next(slim.parameters()).device
    xs = [x.to(device) for x in batches]
    was_training, teacher_training = slim.training, teacher.training
    slim.eval(), teacher.eval()
    present = {n for n, _ in slim.named_modules()}
    out_groups = {l.name: l.out_group for l in graph.layers}
    fits = []
    try:
        names = [n for n in layers_to_reconstruct(graph, arch) if n in present]  # removed blocks are gone
        for name in _execution_order(slim, names, xs[0]):
            group = out_groups[name]
            idx = None if group is None else torch.tensor(arch.groups[group]["indices"], device=device)
            fits.append(_fit_layer(slim, teacher, name, idx, xs, ridge))
    finally:
        slim.train(was_training), teacher.train(teacher_training)
    return fits
