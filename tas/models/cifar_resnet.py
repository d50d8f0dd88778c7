"""CIFAR-style ResNets (He et al. 2016, section 4.2) registered with timm.

timm's :class:`~timm.models.resnet.ResNet` hard-codes four stages and a 64-channel stem, so the
6n+2 CIFAR networks get a class of their own. It reuses timm's :class:`BasicBlock` and keeps the
attribute names of timm's ResNet (``conv1``, ``bn1``, ``act1``, ``maxpool``, ``layer1..3``,
``global_pool``, ``fc``), which is what lets the ResNet family adapter treat both alike.

Shortcuts that change shape use a 1x1 convolution + BN (the paper's option B), as timm does.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.layers import create_classifier
from timm.models import register_model
from timm.models.resnet import BasicBlock, downsample_conv

from ..errors import ModelError

__all__ = ["CifarResNet", "CIFAR_DEPTHS", "TIMM_FACTORY_KWARGS", "drop_factory_kwargs"]

#: arguments ``timm.create_model`` passes to every model entry point, meaningless to a model built
#: directly (no pretrained weights, no download cache)
TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def drop_factory_kwargs(kwargs: dict[str, Any], model: str) -> None:
    """Remove :data:`TIMM_FACTORY_KWARGS` from ``kwargs`` in place; refuse ``features_only=True``
    (these models are built without timm's feature wrapper, so it would be silently ignored)."""
    if kwargs.pop("features_only", False):
        raise ModelError(f"{model} does not support features_only=True; build it without and read the "
                         "stages' outputs (feature_info names them)")
    for key in TIMM_FACTORY_KWARGS:
        kwargs.pop(key, None)

#: blocks per stage of each registered depth (6n + 2 layers)
CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class CifarResNet(nn.Module):
    """Three-stage ResNet with a 3x3 stem and no max-pool, for 32x32-class inputs.

    The forward names ``layer1..3`` one by one, as timm's ResNet names its four, which keeps it
    ``torch.jit.script``-able (TorchScript reads attributes by literal name only) and keeps working
    on a slim copy whose stages the materialiser replaced.

    Args:
        layers: blocks of each of the three stages.
        widths: output channels of the three stages (also the stem width = ``widths[0]``).
        num_classes: classifier outputs; 0 gives a feature extractor.
        in_chans: input image channels.
        global_pool: timm pooling type for the head.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 3, 3),
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        drop_factory_kwargs(kwargs, type(self).__name__)
        if kwargs:
            raise TypeError(f"CifarResNet got unexpected arguments: {sorted(kwargs)}")
        if len(layers) != 3 or len(widths) != 3:
            raise TypeError(f"CifarResNet has three stages: got layers={list(layers)}, widths={list(widths)}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        inplanes = widths[0]
        self.feature_info = []
        for i, (n, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(n):
                s = stride if b == 0 else 1
                down = None
                if b == 0 and (s != 1 or inplanes != planes):
                    down = downsample_conv(inplanes, planes, kernel_size=1, stride=s)
                blocks.append(BasicBlock(inplanes, planes, stride=s, downsample=down))
                inplanes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=planes, reduction=2**i, module=f"layer{i + 1}"))
        self.num_stages = len(layers)
        self.num_features = self.head_hidden_size = inplanes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _default_cfg(depth: int) -> dict:
    return dict(
        url="", architecture=f"cifar_resnet{depth}", num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
        interpolation="bilinear", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        first_conv="conv1", classifier="fc",
    )


def _create(depth: int, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    if pretrained:
        raise ValueError(
            "no pretrained weights are published for cifar_resnet*; train one with train.py "
            "or pass --pretrained-path"
        )
    n = CIFAR_DEPTHS[depth]
    model = CifarResNet(layers=(n, n, n), **kwargs)
    model.pretrained_cfg = model.default_cfg = _default_cfg(depth)
    return model


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (0.27M params, 41M multiply-adds at 32x32)."""
    return _create(20, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR."""
    return _create(32, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR."""
    return _create(44, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (0.85M params, 125M multiply-adds at 32x32)."""
    return _create(56, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR."""
    return _create(110, pretrained, **kwargs)
