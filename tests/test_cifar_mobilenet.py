"""cifar_mobilenetv2: a timm EfficientNet with a stride-1 stem that the EfficientNet adapter prunes unchanged."""
import pytest
import timm
import torch
from conftest import perturb_bn
from timm.models.efficientnet import EfficientNet
from torch.utils.flop_counter import FlopCounterMode

import tas
from tas.prune.flops import count_flops
from tas.prune.materialize import materialize
from tas.nas.supernet import create_supernet

SIZE = (1, 16, 16)  # tiny: every test here runs the network a few times


def _torch_macs(model: torch.nn.Module, size) -> int:
    """Multiply-accumulates by torch's own counter (independent of tas.prune.flops)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *size))
    return counter.get_total_flops() // 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tas.create_model("cifar_mobilenetv2", num_classes=10, in_chans=1)
    perturb_bn(m, seed=1)
    return m.eval()


@pytest.fixture(scope="module")
def supernet(model):
    return create_supernet(model, input_size=SIZE, model_name="cifar_mobilenetv2").eval()


def test_registered_and_cifar_strides():
    assert {"cifar_mobilenetv2", "cifar_mobilenetv2_050"} <= set(timm.list_models("cifar_mobilenet*"))
    m = tas.create_model("cifar_mobilenetv2", num_classes=7, in_chans=1).eval()
    assert type(m) is EfficientNet and m.conv_stem.in_channels == 1 and m.conv_stem.stride == (1, 1)
    with torch.no_grad():
        # CIFAR strides: 8x down in all (ImageNet MobileNet-V2: 32x, a 1x1 map at 32 px)
        assert m.forward_features(torch.zeros(1, 1, 32, 32)).shape[-2:] == (4, 4)
        assert m.forward_features(torch.zeros(1, 1, 28, 28)).shape[-2:] == (4, 4)
        assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    reference = timm.create_model("mobilenetv2_100", num_classes=7, in_chans=1)
    assert m.state_dict().keys() == reference.state_dict().keys()
    m3 = tas.create_model("cifar_mobilenetv2", num_classes=10, in_chans=3)
    assert count_flops(m3, (3, 32, 32)) == _torch_macs(m3, (3, 32, 32)) == 87_976_448


def test_full_width_supernet_equals_the_original(model, supernet):
    assert supernet.graph.family == "efficientnet" and supernet.space.name == "efficientnet"
    assert any(len(d) > 1 for d in supernet.stage_depths.values())  # depth is searched
    arch = supernet.full_arch()
    assert arch.flops == _torch_macs(model, SIZE)
    supernet.set_arch(arch)
    x = torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (supernet(x) - model(x)).abs().max() <= 1e-5


def test_random_arch_materialises_with_exact_flops(model, supernet):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, *SIZE, generator=gen)
    shallower = False
    for _ in range(3):
        arch = supernet.random_arch(gen)
        supernet.set_arch(arch)
        with torch.no_grad():
            hard = supernet(x)
            slim = materialize(model, arch).eval()
            assert (slim(x) - hard).abs().max() <= 1e-4
            assert not torch.allclose(hard, model(x), atol=1e-3)
        assert _torch_macs(slim, SIZE) == arch.flops < arch.full_flops
        assert slim.conv_stem.stride == (1, 1)
        shallower |= any(arch.depths[n] < s.num_blocks for n, s in supernet.graph.stages.items())
    assert shallower
