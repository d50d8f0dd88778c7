"""An independent oracle for materialisation, and a perturbation that moves a supernet's weights the
way a search does.

The oracle computes an architecture without slicing anything: it is the *original* (unpruned)
network holding the weights in question, whose every conv / BN output has the pruned channels of its
group set to zero and whose dropped blocks are identities. Zeroed channels contribute nothing to
any later conv, SE pool or residual sum, so the kept channels follow exactly the slim network's
function, up to float rounding. The one exception is ECA: its 1-d conv slides along the channel axis
and sees the zeros between kept channels, where the slim network's sees the kept channels side by
side; with an ECA kernel that only has a centre tap the two agree again.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from tas.arch import Arch
from tas.families import describe_model
from tas.ops import SearchBN, SearchConv, SearchLinear
from tas.supernet import Supernet


def search_weights(supernet: Supernet, arch: Arch) -> dict[str, torch.Tensor]:
    """The supernet's weights under the original network's state-dict keys: each wrapped layer's
    own tensors, and for a BN the copy of the candidate whose width ``arch`` keeps (the full-width
    candidate for a width outside the candidates)."""
    out: dict[str, torch.Tensor] = {}
    wrapped = []
    for name, m in supernet.model.named_modules():
        if isinstance(m, SearchConv):
            inner = m.conv
        elif isinstance(m, SearchLinear):
            inner = m.fc
        elif isinstance(m, SearchBN):
            group = next(l.out_group for l in supernet.graph.layers if l.name == name)
            width, widths = arch.groups[group]["width"], supernet.groups()[group].widths
            inner = m.bns[widths.index(width) if width in widths else len(widths) - 1]
        else:
            continue
        wrapped.append(f"{name}.")
        out.update({f"{name}.{k}": v for k, v in inner.state_dict().items()})
    for k, v in supernet.model.state_dict().items():
        if not k.startswith(tuple(wrapped)):
            out[k] = v
    return out


def zeroing_oracle(source: nn.Module, arch: Arch) -> nn.Module:
    """The original network computing ``arch`` by zeroing (see the module docstring).

    ``source`` is a plain network (its own weights) or a :class:`Supernet` (its search weights,
    :func:`search_weights`, loaded into a copy of the network it was built from).
    """
    if isinstance(source, Supernet):
        net = copy.deepcopy(source.template)
        net.load_state_dict(search_weights(source, arch))
        graph = source.graph
    else:
        net, graph = copy.deepcopy(source), describe_model(source)
    for layer in graph.layers:
        if layer.kind in ("conv", "bn") and layer.out_group is not None:
            g = arch.groups[layer.out_group]
            keep = torch.zeros(g["channels"])
            keep[g["indices"]] = 1.0
            net.get_submodule(layer.name).register_forward_hook(
                lambda _m, _i, y, keep=keep: y * keep.to(y).view(1, -1, 1, 1))
    for name, s in arch.stages.items():
        stage = net.get_submodule(name)
        for b in range(s["depth"], s["blocks"]):
            stage[b] = nn.Identity()
    return net.eval()


def perturb_like_search(supernet: Supernet, seed: int = 0, scale: float = 0.2) -> None:
    """Move every weight the search trains away from the teacher's: shared convs, ECA / SE weights
    and the classifier by relative noise, and each candidate's BN separately to trained-looking
    affine parameters and statistics (no zero-initialised last BN of a block left, which would hide
    the whole residual branch)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in supernet.weight_parameters():
            p.add_(scale * p.abs().mean().clamp(min=1e-2) * torch.randn(p.shape, generator=g))
        for m in supernet.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=g))


def grouped_random_indices(supernet: Supernet, arch: Arch, seed: int = 0) -> Arch:
    """``arch`` with non-prefix kept channels: random ones, at the same local positions in every
    conv group of a grouped group (what SA++ and the baselines produce)."""
    gen = torch.Generator().manual_seed(seed)
    arch = Arch.from_dict(copy.deepcopy(arch.to_dict()))
    for name, g in arch.groups.items():
        q = supernet.graph.groups[name].conv_groups
        per = g["channels"] // q
        local = torch.randperm(per, generator=gen)[: g["width"] // q]
        g["indices"] = sorted(int(c * per + i) for c in range(q) for i in local)
    return arch
