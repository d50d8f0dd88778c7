"""The structural description of a backbone that every family adapter produces.

A :class:`ModelGraph` says which channel groups a network has (sets of channels that must be kept
together, such as a ResNet stage's residual stream), which prunable layer reads and writes which
group, and which stages have a searchable depth. It is plain data, computed once from a model by
its family adapter (:mod:`tas.prune.families`); the supernet, the cost model and the materialiser all
consume it and nothing else, which is what keeps them free of per-family code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Group", "Layer", "Stage", "ModelGraph"]


@dataclass
class Group:
    """Channels that are kept or dropped together.

    Attributes:
        name: unique name, used as the key in :class:`~tas.prune.arch.Arch`.
        channels: full width.
        kind: ``stem``, ``stream`` (residual-coupled) or ``inner`` (inside one block).
        conv_groups: the group feeds/leaves a grouped convolution with this many groups; every
            width is then a multiple of it and each conv group keeps as many channels (the same
            local positions where it feeds the conv, see :meth:`tas.prune.arch.Arch.check_fits`), so the
            slim convolution stays grouped.
    """

    name: str
    channels: int
    kind: str
    conv_groups: int = 1

    def canonical_order(self) -> torch.Tensor:
        """Channel ranking used by prefix selection: the first ``w`` entries are the kept ones.

        Plain groups rank channels 0..C-1. Grouped ones interleave the conv groups (local position
        0 of every group, then position 1, ...), so any multiple of ``conv_groups`` keeps the same
        number of channels in every group.
        """
        g = self.conv_groups
        if g == 1:
            return torch.arange(self.channels)
        per = self.channels // g
        return torch.arange(self.channels).view(g, per).t().reshape(-1)


@dataclass
class Layer:
    """A prunable module and the groups its channel dimensions belong to.

    Attributes:
        name: dotted module path in the original model.
        kind: ``conv``, ``bn``, ``linear`` or ``channel_conv`` (an ECA-style 1-d conv along channels,
            which has no channel-indexed weights but costs FLOPs per channel).
        in_group: group of the input channels, or None when they are fixed (image, SE bottleneck).
        out_group: group of the output channels, or None when fixed (classifier, SE bottleneck).
        block: ``(stage name, block index)`` when the layer is removed with its block, else None.
    """

    name: str
    kind: str
    in_group: str | None
    out_group: str | None
    block: tuple[str, int] | None = None


@dataclass
class Stage:
    """A sequence of blocks whose depth is searched; the first block is always kept."""

    name: str
    num_blocks: int


@dataclass
class ModelGraph:
    """Groups, layers and stages of one network, as found by its family adapter."""

    family: str
    groups: dict[str, Group] = field(default_factory=dict)
    layers: list[Layer] = field(default_factory=list)
    stages: dict[str, Stage] = field(default_factory=dict)

    def add_group(self, name: str, channels: int, kind: str, conv_groups: int = 1) -> str:
        if name in self.groups:
            raise ValueError(f"duplicate group {name}")
        self.groups[name] = Group(name, channels, kind, conv_groups)
        return name

    def add_layer(self, name: str, kind: str, in_group: str | None, out_group: str | None,
                  block: tuple[str, int] | None = None) -> None:
        self.layers.append(Layer(name, kind, in_group, out_group, block))
