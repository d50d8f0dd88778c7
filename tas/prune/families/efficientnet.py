"""Adapter for timm's ``EfficientNet`` and ``MobileNetV3`` classes.

Covers the models timm builds on them from DepthwiseSeparable, InvertedResidual, EdgeResidual and
ConvBnAct blocks with SqueezeExcite: EfficientNet(-Lite), MobileNet-V2, MNASNet, FBNet, TinyNet
(family ``efficientnet``, the ``EfficientNet`` class) and MobileNet-V3, LCNet, HardCoReNAS,
FBNet-V3 (family ``mobilenet``, the ``MobileNetV3`` class), the TF ports (``tf_*``) included: their
strided convs are timm's ``Conv2dSame`` (TF's dynamic "same" padding), which the search wrappers and
the slim layers run with the padding rule kept (:func:`tas.prune.slicing.conv_view`). Anything else in those
classes (mixed or CondConv kernels, space-to-depth, anti-aliasing, MobileNet-V4 UIR/attention
blocks, non-BN norms) is refused with :class:`ModelError`.

Groups it declares:

* ``stem``: ``conv_stem``'s output (``bn1``); when the first block has a skip (MobileNet-V3) it is
  also that stage's residual stream.
* ``blocks.S``: stage S's stream, the output of its first block's projection, shared by the
  projections of the following residual (``has_skip``) blocks and by every consumer (the next
  blocks' expansion, a depthwise-separable block's depthwise conv and SE, the head).
* ``blocks.S.B``: the output of a block B > 0 without a skip (a width change inside a stage, LCNet);
  it starts a new stream that the stage's later blocks follow.
* ``blocks.S.B.mid``: a block's expanded width: the expansion conv's output, the depthwise conv
  (same group in and out), the SE's channel-facing sides (its bottleneck width stays fixed) and the
  projection's input. A depthwise-separable block has no expansion, so its depthwise conv and SE
  run on the block's input stream group.
* ``head``: ``conv_head``'s output (``bn2`` / ``norm_head``), read by the classifier; kind
  ``inner`` (it is searched with the blocks' inner widths).

Stages: a stage's depth is searchable only when every block after its first has a residual skip
(removing a block without one would change the stream width its consumers read). Other stages are
not declared as stages at all: they always keep every block, their layers have no ``block`` key,
and they do not appear in an :class:`~tas.prune.arch.Arch`'s ``stages``.
"""
from __future__ import annotations

import torch.nn as nn
from timm.layers import EcaModule, SEModule
from timm.models._efficientnet_blocks import (ConvBnAct, DepthwiseSeparableConv, EdgeResidual,
                                              InvertedResidual, SqueezeExcite)
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3

from ..graph import ModelGraph, Stage
from .base import (describe_attention, register_family, register_finalizer, sliceable_conv, sync_feature_info,
                   variant_check)

__all__ = ["describe_efficientnet", "sync_head_attributes"]

_BLOCKS = (DepthwiseSeparableConv, InvertedResidual, EdgeResidual, ConvBnAct)


_check = variant_check("EfficientNet/MobileNet")


def _conv(model: nn.Module, name: str) -> nn.Conv2d:
    return sliceable_conv(model, name, _check, "mixed/CondConv kernels are not supported")


def _bn(model: nn.Module, name: str, channels: int) -> None:
    m = model.get_submodule(name)
    _check(isinstance(m, nn.BatchNorm2d), f"{name} is a {type(m).__name__}, not a BatchNorm2d")
    _check(m.num_features == channels, f"{name} has {m.num_features} features, its conv {channels}")
    _check(not any(True for c in m.children() for _ in c.parameters()),
           f"{name} has a per-channel activation with parameters")


def _depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _se(g: ModelGraph, name: str, module: nn.Module, group: str, block) -> None:
    if isinstance(module, SqueezeExcite):
        # The SE bottleneck width stays fixed; only its channel-facing sides follow the block.
        g.add_layer(f"{name}.conv_reduce", "conv", group, None, block)
        g.add_layer(f"{name}.conv_expand", "conv", None, group, block)
    elif isinstance(module, (SEModule, EcaModule)):
        describe_attention(g, name, module, group, block)
    else:
        _check(isinstance(module, nn.Identity), f"attention module {type(module).__name__} at {name}")


def _is_efficientnet(model: nn.Module) -> bool:
    return isinstance(model, EfficientNet)


def _is_mobilenet(model: nn.Module) -> bool:
    return isinstance(model, MobileNetV3)


def describe_efficientnet(model: nn.Module) -> ModelGraph:
    """Describe a timm ``EfficientNet`` or ``MobileNetV3`` as a :class:`ModelGraph`."""
    g = ModelGraph("mobilenet" if isinstance(model, MobileNetV3) else "efficientnet")
    stem = _conv(model, "conv_stem")
    _check(stem.groups == 1, "grouped stem conv")
    g.add_group("stem", stem.out_channels, "stem")
    g.add_layer("conv_stem", "conv", None, "stem")
    _bn(model, "bn1", stem.out_channels)
    g.add_layer("bn1", "bn", None, "stem")

    stream = "stem"
    _check(isinstance(model.blocks, nn.Sequential), "blocks is not an nn.Sequential")
    for s, stage in enumerate(model.blocks):
        sname = f"blocks.{s}"
        _check(isinstance(stage, nn.Sequential), f"{sname} is not an nn.Sequential of blocks")
        searchable = all(getattr(b, "has_skip", False) for b in list(stage)[1:])
        if searchable:
            g.stages[sname] = Stage(sname, len(stage))
        for b, block in enumerate(stage):
            stream = _describe_block(g, model, sname, b, block, stream, (sname, b) if searchable else None)
    _describe_head(g, model, stream)
    return g


def _describe_block(g: ModelGraph, model: nn.Module, sname: str, b: int, block: nn.Module, stream_in: str,
                    key: tuple[str, int] | None) -> str:
    """Add block ``b`` of stage ``sname`` (reading the group ``stream_in``); returns the group it writes."""
    bname = f"{sname}.{b}"
    _check(type(block) in _BLOCKS, f"block type {type(block).__name__} at {bname}")
    _check(getattr(block, "conv_s2d", None) is None, f"space-to-depth block at {bname}")
    _check(isinstance(getattr(block, "aa", nn.Identity()), nn.Identity), f"anti-aliased block at {bname}")
    stream = stream_in
    proj_name = {DepthwiseSeparableConv: "conv_pw", InvertedResidual: "conv_pwl",
                 EdgeResidual: "conv_pwl", ConvBnAct: "conv"}[type(block)]
    proj = _conv(model, f"{bname}.{proj_name}")
    _check(proj.groups == 1, f"grouped projection conv at {bname}")
    if block.has_skip:
        _check(proj.out_channels == g.groups[stream_in].channels, f"skip with a width change at {bname}")
        g.groups[stream_in].kind = "stream"
    else:
        stream = g.add_group(sname if b == 0 else bname, proj.out_channels, "stream")

    if isinstance(block, ConvBnAct):
        g.add_layer(f"{bname}.conv", "conv", stream_in, stream, key)
        _bn(model, f"{bname}.bn1", proj.out_channels)
        g.add_layer(f"{bname}.bn1", "bn", None, stream, key)
        return stream
    mid, bn_out = _describe_expansion(g, model, bname, block, stream_in, key)
    _se(g, f"{bname}.se", block.se, mid, key)
    g.add_layer(f"{bname}.{proj_name}", "conv", mid, stream, key)
    _bn(model, f"{bname}.{bn_out}", proj.out_channels)
    g.add_layer(f"{bname}.{bn_out}", "bn", None, stream, key)
    return stream


def _describe_expansion(g: ModelGraph, model: nn.Module, bname: str, block: nn.Module, stream_in: str,
                        key: tuple[str, int] | None) -> tuple[str, str]:
    """The layers of a block before its SE and projection; returns ``(the group they write, the name of
    the projection's BN)``."""
    if isinstance(block, DepthwiseSeparableConv):
        dw = _conv(model, f"{bname}.conv_dw")
        if _depthwise(dw):  # runs on the block's input: it belongs to the input stream
            mid = stream_in
        else:
            _check(dw.groups == 1, f"grouped (not depthwise) conv_dw at {bname}")
            mid = g.add_group(f"{bname}.mid", dw.out_channels, "inner")
        g.add_layer(f"{bname}.conv_dw", "conv", stream_in, mid, key)
        _bn(model, f"{bname}.bn1", dw.out_channels)
        g.add_layer(f"{bname}.bn1", "bn", None, mid, key)
        return mid, "bn2"
    if isinstance(block, InvertedResidual):
        pw = _conv(model, f"{bname}.conv_pw")
        _check(pw.groups == 1, f"grouped expansion conv at {bname}")
        dw = _conv(model, f"{bname}.conv_dw")
        card = 1 if _depthwise(dw) else dw.groups
        mid = g.add_group(f"{bname}.mid", pw.out_channels, "inner", card)
        g.add_layer(f"{bname}.conv_pw", "conv", stream_in, mid, key)
        _bn(model, f"{bname}.bn1", pw.out_channels)
        g.add_layer(f"{bname}.bn1", "bn", None, mid, key)
        g.add_layer(f"{bname}.conv_dw", "conv", mid, mid, key)
        _bn(model, f"{bname}.bn2", dw.out_channels)
        g.add_layer(f"{bname}.bn2", "bn", None, mid, key)
        return mid, "bn3"
    # EdgeResidual
    exp = _conv(model, f"{bname}.conv_exp")
    _check(exp.groups == 1, f"grouped expansion conv at {bname}")
    mid = g.add_group(f"{bname}.mid", exp.out_channels, "inner")
    g.add_layer(f"{bname}.conv_exp", "conv", stream_in, mid, key)
    _bn(model, f"{bname}.bn1", exp.out_channels)
    g.add_layer(f"{bname}.bn1", "bn", None, mid, key)
    return mid, "bn2"


def _describe_head(g: ModelGraph, model: nn.Module, stream: str) -> None:
    """The head conv (and its norm), if any, and the classifier, reading ``stream``."""
    pool = model.global_pool
    _check(getattr(pool, "feat_mult", lambda: 1)() == 1, "pooling that concatenates (catavgmax)")
    feat = stream
    if isinstance(model.conv_head, nn.Identity):
        _check(all(isinstance(getattr(model, n, None), (nn.Identity, type(None))) for n in ("bn2", "norm_head")),
               "head norm without a head conv")
    else:
        head = _conv(model, "conv_head")
        _check(head.groups == 1, "grouped head conv")
        feat = g.add_group("head", head.out_channels, "inner")
        g.add_layer("conv_head", "conv", stream, feat)
        for n in ("bn2", "norm_head"):
            m = getattr(model, n, None)
            if m is not None and not isinstance(m, nn.Identity):
                _bn(model, n, head.out_channels)
                g.add_layer(n, "bn", None, feat)
    fc = model.classifier
    if isinstance(fc, nn.Linear):
        g.add_layer("classifier", "linear", feat, None)
    else:
        _check(isinstance(fc, nn.Identity), f"classifier {type(fc).__name__}")


register_family("efficientnet", _is_efficientnet)(describe_efficientnet)
register_family("mobilenet", _is_mobilenet)(describe_efficientnet)


@register_finalizer("efficientnet")
@register_finalizer("mobilenet")
def sync_head_attributes(model: nn.Module) -> nn.Module:
    """Set ``num_features`` / ``head_hidden_size`` and ``feature_info``'s widths of a (slim) model
    from its actual layers.

    Materialising shrinks ``conv_head`` and the classifier; timm's ``reset_classifier`` and feature
    code read these attributes. ``EfficientNet``: ``num_features`` = ``head_hidden_size`` = the
    head conv's output (the last stream without one). ``MobileNetV3``: ``num_features`` = the
    last stream (the head conv's input), ``head_hidden_size`` = the head conv's output.
    """
    head = model.conv_head
    last_stream = head.in_channels if isinstance(head, nn.Conv2d) else _last_stream(model)
    head_out = head.out_channels if isinstance(head, nn.Conv2d) else last_stream
    if isinstance(model, MobileNetV3):
        model.num_features, model.head_hidden_size = last_stream, head_out
    elif isinstance(model, EfficientNet):
        model.num_features = model.head_hidden_size = head_out
    return sync_feature_info(model, lambda name: _output_width(model.get_submodule(name)))


def _output_width(module: nn.Module) -> int:
    """Output channels of a feature module (``bn1``, a stage, a block): a BN's features, else its last
    conv's outputs (a block's projection comes after its SE)."""
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _last_stream(model: nn.Module) -> int:
    convs = [m for m in model.blocks.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels if convs else model.conv_stem.out_channels
