"""Materialise: an :class:`~tas.prune.arch.Arch` + weights → a dense slim network.

The slim network is an instance of the source model's own class (a timm ``ResNet`` stays a timm
``ResNet``) with every prunable layer replaced by a smaller dense copy holding the kept channels'
weights, removed blocks dropped from their stages, and no masks or search parameters. It is
rebuilt from ``arch.json`` + ``model.safetensors`` alone by :func:`build_slim` + ``load_state_dict``,
which is what :func:`tas.prune.load.load_slim` does for a run directory.
"""
from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn

from ..models.factory import create_model
from .arch import Arch
from .families import describe_model, finalize_slim
from .graph import ModelGraph
from .slicing import slice_bn, slice_conv, slice_linear

__all__ = ["materialize", "build_slim", "SlicesItself", "copy_unsliced"]


@runtime_checkable
class SlicesItself(Protocol):
    """A source network that slices itself to an architecture: the supernet
    (:meth:`tas.nas.supernet.Supernet.slim_copy`), whose wrappers hold the search's weights.

    Declared here so that the materialiser, a layer below the search, needs nothing of it.
    """

    def slim_copy(self, arch: Arch) -> tuple[nn.Module, ModelGraph]:
        """A copy of the network with every prunable layer sliced to ``arch`` (full depths, no
        search parameters), and the graph it was described by."""



def copy_unsliced(searched: nn.Module, slim: nn.Module, sliced: tuple[str, ...]) -> None:
    """Copy every tensor of ``slim`` outside the ``sliced`` layers from the supernet's ``searched``
    network: ECA's channel conv, an SE's fixed-width BN, whatever the adapter does not list. The
    search trained them too; the template holds the teacher's values."""
    source = searched.state_dict()
    with torch.no_grad():
        for key, t in slim.state_dict(keep_vars=True).items():
            if not key.startswith(sliced):
                t.copy_(source[key])


def materialize(source: nn.Module, arch: Arch) -> nn.Module:
    """The dense slim network of ``arch`` with weights gathered from ``source``.

    Args:
        source: a :class:`~tas.nas.supernet.Supernet` (any :class:`SlicesItself`; weights of the search: shared convs and the
            per-candidate BN of each kept width) or the plain source network (e.g. the teacher,
            for ``--init inherit``).
        arch: the architecture; it must come from the same model.

    Returns:
        The slim network, carrying ``arch`` as its ``tas_arch`` attribute.
    """
    if isinstance(source, SlicesItself):
        slim, graph = source.slim_copy(arch)
    else:
        graph = describe_model(source)
        arch.check_fits(graph, type(source).__name__)
        slim = copy.deepcopy(source)
        device = next(source.parameters()).device
        idx = {n: torch.tensor(g["indices"], dtype=torch.long, device=device) for n, g in arch.groups.items()}
        for layer in graph.layers:
            m = source.get_submodule(layer.name)
            i, o = idx.get(layer.in_group), idx.get(layer.out_group)
            if layer.kind == "conv":
                slim.set_submodule(layer.name, slice_conv(m, i, o))
            elif layer.kind == "bn":
                slim.set_submodule(layer.name, slice_bn(m, o))
            elif layer.kind == "linear":
                slim.set_submodule(layer.name, slice_linear(m, i))
    for name, s in arch.stages.items():
        stage = slim.get_submodule(name)
        slim.set_submodule(name, nn.Sequential(*list(stage)[: s["depth"]]))
    head = [l for l in graph.layers if l.kind == "linear"]
    if head and hasattr(slim, "num_features"):  # keeps reset_classifier() working on the slim net
        slim.num_features = slim.get_submodule(head[-1].name).in_features
    finalize_slim(graph.family, slim)
    slim.pretrained_cfg = dict(getattr(source, "pretrained_cfg", None) or getattr(slim, "pretrained_cfg", {}) or {})
    slim.tas_arch = arch  # what it is: tas.distill and tas.export_onnx read its input size and spec from here
    slim.eval() if not source.training else slim.train()
    return slim


def build_slim(arch: Arch | dict) -> nn.Module:
    """The slim network's structure (random weights), ready for ``load_state_dict``."""
    if isinstance(arch, dict):
        arch = Arch.from_dict(arch)
    kwargs = dict(arch.model_kwargs)
    model = create_model(arch.model, **kwargs)
    return materialize(model, arch)
