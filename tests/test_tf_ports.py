"""timm's TF ports (``tf_*``): dynamic "same" padding (``Conv2dSame``) through search and slimming.

TF's "SAME" padding pads a strided conv by an amount computed from each input's size, putting the
odd pixel after: at an even size a 3x3 stride-2 conv gets 0 pixels before and 1 after, where a
static ``padding=1`` conv takes 1 on each side. The sizes below (32, 16 px) are even so the two
rules give different numbers; 37 px checks that the padding is recomputed for another input size.
"""
import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import perturb_bn
from timm.layers import Conv2dSame

import tas  # noqa: F401
from tas.prune.flops import count_flops, count_params
from tas.prune.materialize import build_slim, materialize
from tas.nas.supernet import create_supernet

SIZE = (3, 32, 32)
MODELS = ["tf_efficientnet_b0", "tf_efficientnet_lite0", "tf_mobilenetv3_large_100"]


@pytest.fixture(scope="module", params=MODELS)
def tf_supernet(request):
    name = request.param
    model = timm.create_model(name, num_classes=5, pretrained=False).eval()
    perturb_bn(model, seed=1)
    assert any(type(m) is Conv2dSame for m in model.modules())  # the port really pads dynamically
    return create_supernet(model, input_size=SIZE, model_name=name).eval(), model


def _inputs(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n, n, generator=gen) for n in (SIZE[1], 37)]


def _tf_same_conv(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """TF's "SAME" convolution written out: output size ceil(n / stride), total padding split with
    the odd pixel after."""
    pads = []
    for n, k, s, d in zip(x.shape[:-3:-1], conv.kernel_size[::-1], conv.stride[::-1], conv.dilation[::-1]):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads += [total // 2, total - total // 2]  # F.pad order: width (left, right), then height
    return F.conv2d(F.pad(x, pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def test_full_width_hard_mode_equals_the_original(tf_supernet):
    s, model = tf_supernet
    s.set_arch(s.full_arch())
    with torch.no_grad():
        for x in _inputs(0):
            assert (s(x) - model(x)).abs().max() <= 1e-4


def test_hard_mode_equals_the_slim_network(tf_supernet):
    s = copy.deepcopy(tf_supernet[0])
    perturb_bn(s, seed=2)  # every candidate's BN differs, as after a search
    gen = torch.Generator().manual_seed(0)
    arch = s.random_arch(gen)
    for g in arch.groups.values():  # arbitrary kept channels (SA++, the baselines), not only prefixes
        g["indices"] = sorted(torch.randperm(g["channels"], generator=gen)[: g["width"]].tolist())
    s.set_arch(arch)
    slim = materialize(s, arch).eval()
    rebuilt = build_slim(arch.to_dict()).eval()  # what load_slim does with arch.json + the weights
    rebuilt.load_state_dict(slim.state_dict())
    with torch.no_grad():
        for x in _inputs(1):
            hard = s(x)
            assert (hard - slim(x)).abs().max() <= 1e-4
            assert (hard - rebuilt(x)).abs().max() <= 1e-4
    assert count_flops(slim, SIZE) == arch.flops < arch.full_flops
    assert count_params(slim) == arch.params


def test_slim_convs_keep_dynamic_same_padding(tf_supernet):
    s, model = tf_supernet
    arch = s.random_arch(torch.Generator().manual_seed(3))
    slim = materialize(s, arch).eval()
    names = [n for n, m in model.named_modules() if type(m) is Conv2dSame]
    gen = torch.Generator().manual_seed(4)
    narrower = 0
    for name in names:  # the stem and stride-2 depthwise convs: first blocks, never dropped
        conv = slim.get_submodule(name)
        assert type(conv) is Conv2dSame
        narrower += conv.out_channels < model.get_submodule(name).out_channels
        x = torch.randn(1, conv.in_channels, 16, 16, generator=gen)
        with torch.no_grad():
            y = conv(x)
            static = F.conv2d(x, conv.weight, conv.bias, conv.stride, [k // 2 for k in conv.kernel_size],
                              conv.dilation, conv.groups)
            assert (y - _tf_same_conv(conv, x)).abs().max() <= 1e-5
            assert y.shape == static.shape and not torch.allclose(y, static, atol=1e-3)  # the rules differ here
    assert narrower > 0  # the check ran on sliced layers


@pytest.mark.slow
def test_slim_tf_port_exports_to_onnx(tmp_path):
    from tas.deploy.export import export_onnx

    model = timm.create_model("tf_efficientnet_lite0", num_classes=5, pretrained=False).eval()
    perturb_bn(model, seed=1)
    s = create_supernet(model, input_size=SIZE)
    slim = materialize(s, s.random_arch(torch.Generator().manual_seed(5))).eval()
    info = export_onnx(slim, tmp_path / "slim.onnx", SIZE)  # ORT-vs-torch parity is checked inside
    assert info["max_abs_diff"] <= 1e-4
