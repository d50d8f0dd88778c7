"""CIFAR-style MobileNet-V2 (Sandler et al. 2018) for 28–32 px inputs, registered with timm.

Built by timm's own EfficientNet builder from a MobileNet-V2 block definition, so the model *is* a
timm :class:`~timm.models.efficientnet.EfficientNet` (same modules, same state-dict keys as
``mobilenetv2_100``) and the EfficientNet family adapter describes it unchanged. Two strides differ
from the ImageNet network, as in the usual CIFAR adaptations, so that a 32 px input ends at 4×4
instead of 1×1:

* the 3×3 stem runs at stride 1 (ImageNet: 2);
* the second stage (24 channels) runs at stride 1 (ImageNet: 2).

The remaining three stride-2 stages take 32 → 16 → 8 → 4 (28 px: 28 → 14 → 7 → 4).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch.nn as nn
from timm.layers import create_conv2d
from timm.models import register_model
from timm.models._efficientnet_builder import (_init_weight_goog, decode_arch_def, resolve_act_layer,
                                               resolve_bn_args, round_channels)
from timm.models.efficientnet import EfficientNet

from .cifar_resnet import drop_factory_kwargs

__all__ = ["CIFAR_MOBILENETV2_ARCH", "cifar_mobilenetv2"]

#: timm block strings (``ds``: depthwise-separable, ``ir``: inverted residual; ``r`` blocks, ``k``
#: kernel, ``s`` stride, ``e`` expansion, ``c`` output channels); the second stage's stride is 1
CIFAR_MOBILENETV2_ARCH = [
    ["ds_r1_k3_s1_c16"],
    ["ir_r2_k3_s1_e6_c24"],
    ["ir_r3_k3_s2_e6_c32"],
    ["ir_r4_k3_s2_e6_c64"],
    ["ir_r3_k3_s1_e6_c96"],
    ["ir_r3_k3_s2_e6_c160"],
    ["ir_r1_k3_s1_e6_c320"],
]


def _default_cfg(variant: str) -> dict:
    return dict(
        url="", architecture=variant, num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0,
        interpolation="bilinear", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        first_conv="conv_stem", classifier="classifier",
    )


def _create(variant: str, channel_multiplier: float, pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """A timm EfficientNet with the CIFAR MobileNet-V2 blocks and a stride-1 stem."""
    if pretrained:
        raise ValueError(f"no pretrained weights are published for {variant}; train one with train.py "
                         "or pass --pretrained-path")
    drop_factory_kwargs(kwargs, variant)
    round_chs_fn = partial(round_channels, multiplier=channel_multiplier)
    model = EfficientNet(
        block_args=decode_arch_def(CIFAR_MOBILENETV2_ARCH),
        num_features=max(1280, round_chs_fn(1280)),
        stem_size=32,
        round_chs_fn=round_chs_fn,
        norm_layer=kwargs.pop("norm_layer", None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=resolve_act_layer(kwargs, "relu6"),
        **kwargs,
    )
    # EfficientNet fixes the stem at stride 2; a new stride-1 conv (same padding 1 for a 3x3 kernel),
    # initialised like the rest of the network.
    old = model.conv_stem
    model.conv_stem = create_conv2d(old.in_channels, old.out_channels, old.kernel_size[0], stride=1)
    _init_weight_goog(model.conv_stem)
    for info in model.feature_info:  # one stride-2 layer fewer before every feature map
        info["reduction"] = max(1, info["reduction"] // 2)
    model.pretrained_cfg = model.default_cfg = _default_cfg(variant)
    return model


@register_model
def cifar_mobilenetv2(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """MobileNet-V2 1.0 for CIFAR-sized inputs (2.2M params, 88M multiply-adds at 32x32 with 10 classes)."""
    return _create("cifar_mobilenetv2", 1.0, pretrained, **kwargs)


@register_model
def cifar_mobilenetv2_050(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """MobileNet-V2 0.5 (blocks and stem at half width, head 1280; 0.70M params, 28M multiply-adds at 32x32)."""
    return _create("cifar_mobilenetv2_050", 0.5, pretrained, **kwargs)
