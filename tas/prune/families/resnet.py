"""Adapter for timm's ResNet family (ResNet, ResNeXt, SE/ECA-ResNet, -D/-T stems) and CifarResNet.

Groups it declares:

* ``stem.N``: inner convs of a deep/tiered stem, one group each.
* ``stem``: the stem's output; shared with ``layer1``'s residual stream when ``layer1`` has no
  downsample (ResNet-18/34, CIFAR ResNets).
* ``layerS``: stage S's residual stream: every block's last conv, the downsample conv, the SE
  gate, and every consumer (next blocks' first conv and shortcut, the classifier).
* ``layerS.B.convN``: a block's inner widths, one group per conv. A grouped 3x3 conv (ResNeXt)
  makes its input and output groups conv-grouped so the slim conv stays grouped.
"""
from __future__ import annotations

import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..graph import ModelGraph, Stage
from ...models.cifar_resnet import CifarResNet
from .base import (describe_attention, register_family, register_finalizer, sliceable_conv, sync_feature_info,
                   variant_check)


def _is_resnet(model: nn.Module) -> bool:
    return isinstance(model, (ResNet, CifarResNet))


def _stages(model: nn.Module) -> list[str]:
    names = []
    while isinstance(getattr(model, f"layer{len(names) + 1}", None), nn.Sequential):
        names.append(f"layer{len(names) + 1}")
    return names


_check = variant_check("ResNet")


@register_family("resnet", _is_resnet)
def describe_resnet(model: nn.Module) -> ModelGraph:
    """Describe a timm ``ResNet`` or a :class:`CifarResNet` as a :class:`ModelGraph`."""
    g = ModelGraph("resnet")
    conv1 = model.conv1
    if isinstance(conv1, nn.Sequential):  # deep / tiered stem: conv-bn-act-conv-bn-act-conv
        convs = [i for i, m in enumerate(conv1) if isinstance(m, nn.Conv2d)]
        prev = None
        for i in convs[:-1]:
            grp = g.add_group(f"stem.{i}", conv1[i].out_channels, "stem")
            g.add_layer(f"conv1.{i}", "conv", prev, grp)
            _check(isinstance(conv1[i + 1], nn.BatchNorm2d), "deep stem without BN after each conv")
            g.add_layer(f"conv1.{i + 1}", "bn", None, grp)
            prev = grp
        stem_out = conv1[convs[-1]].out_channels
        g.add_group("stem", stem_out, "stem")
        g.add_layer(f"conv1.{convs[-1]}", "conv", prev, "stem")
    else:
        _check(isinstance(conv1, nn.Conv2d), "stem conv1 must be a Conv2d or a deep stem")
        g.add_group("stem", conv1.out_channels, "stem")
        g.add_layer("conv1", "conv", None, "stem")
    _check(isinstance(model.bn1, nn.BatchNorm2d), "stem norm must be BatchNorm2d")
    g.add_layer("bn1", "bn", None, "stem")
    _check(not any(isinstance(m, nn.Conv2d) for m in model.maxpool.modules()), "conv stem pooling")

    stream = "stem"
    for sname in _stages(model):
        stage = getattr(model, sname)
        g.stages[sname] = Stage(sname, len(stage))
        for b, block in enumerate(stage):
            bname, key = f"{sname}.{b}", (sname, b)
            _check(isinstance(block, (BasicBlock, Bottleneck)), f"block type {type(block).__name__}")
            _check(isinstance(block.aa, nn.Identity), "anti-aliased blocks (aa_layer)")
            stream_in = stream
            if block.downsample is not None:
                _check(b == 0, "downsample after a stage's first block")
                convs = [(i, m) for i, m in enumerate(block.downsample) if isinstance(m, nn.Conv2d)]
                _check(len(convs) == 1, "downsample with other than one conv")
                i, conv = convs[0]
                stream = g.add_group(sname, conv.out_channels, "stream")
                g.add_layer(f"{bname}.downsample.{i}", "conv", stream_in, stream, key)
                g.add_layer(f"{bname}.downsample.{i + 1}", "bn", None, stream, key)
            else:
                g.groups[stream].kind = "stream"
            if isinstance(block, BasicBlock):
                inner = g.add_group(f"{bname}.conv1", block.conv1.out_channels, "inner")
                g.add_layer(f"{bname}.conv1", "conv", stream_in, inner, key)
                g.add_layer(f"{bname}.bn1", "bn", None, inner, key)
                g.add_layer(f"{bname}.conv2", "conv", inner, stream, key)
                g.add_layer(f"{bname}.bn2", "bn", None, stream, key)
            else:
                card = block.conv2.groups
                _check(card == 1 or card < block.conv2.in_channels, "depthwise bottleneck conv")
                in1 = g.add_group(f"{bname}.conv1", block.conv1.out_channels, "inner", card)
                in2 = g.add_group(f"{bname}.conv2", block.conv2.out_channels, "inner", card)
                g.add_layer(f"{bname}.conv1", "conv", stream_in, in1, key)
                g.add_layer(f"{bname}.bn1", "bn", None, in1, key)
                g.add_layer(f"{bname}.conv2", "conv", in1, in2, key)
                g.add_layer(f"{bname}.bn2", "bn", None, in2, key)
                g.add_layer(f"{bname}.conv3", "conv", in2, stream, key)
                g.add_layer(f"{bname}.bn3", "bn", None, stream, key)
            describe_attention(g, f"{bname}.se", block.se, stream, key)
    fc = model.fc
    if isinstance(fc, nn.Linear):
        g.add_layer("fc", "linear", stream, None)
    elif isinstance(fc, nn.Conv2d):
        g.add_layer("fc", "conv", stream, None)
    for layer in g.layers:
        if layer.kind == "conv":
            sliceable_conv(model, layer.name, _check)
    return g


@register_finalizer("resnet")
def sync_feature_widths(model: nn.Module) -> nn.Module:
    """Set ``feature_info``'s widths from a (slim) model's layers: the stem's (``act1``) is ``bn1``'s,
    a stage's is its last block's last conv's output."""
    def width_of(module: str) -> int:
        if module not in _stages(model):
            return model.bn1.num_features
        last = model.get_submodule(module)[-1]
        return (last.conv3 if isinstance(last, Bottleneck) else last.conv2).out_channels

    return sync_feature_info(model, width_of)
