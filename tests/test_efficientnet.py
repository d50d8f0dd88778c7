"""The EfficientNet / MobileNetV3 family: hard mode == the materialised slim network, exact costs."""
import copy

import pytest
import timm
import torch
from conftest import perturb_bn
from conftest import assert_hard_mode_is_the_slim_network, grouped_random_indices, search_weights, zeroing_oracle
from timm.layers import BatchNormAct2d

import tas  # noqa: F401
from tas.errors import ModelError
from tas.prune.families import describe_model
from tas.prune.flops import count_flops, count_params
from tas.prune.materialize import materialize
from tas.prune.slicing import slice_bn
from tas.nas.supernet import create_supernet

SIZE = (3, 64, 64)
MODELS = ["mobilenetv2_100", "efficientnet_b0", "mobilenetv3_large_100", "efficientnet_lite0"]


@pytest.fixture(scope="module", params=MODELS)
def supernet(request):
    name = request.param
    model = timm.create_model(name, num_classes=10, pretrained=False).eval()
    perturb_bn(model, seed=1)
    s = create_supernet(model, input_size=SIZE, model_name=name)
    perturb_bn(s)
    return s.eval(), model


def test_default_space_and_family(supernet):
    s, model = supernet
    family = "mobilenet" if type(model).__name__ == "MobileNetV3" else "efficientnet"
    assert s.graph.family == family and s.space.name == family and s.space.divisor == 8
    assert any(len(d) > 1 for d in s.stage_depths.values())  # some depth is searched


def test_hard_mode_equals_materialised(supernet):
    s, model = supernet
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *SIZE)
    for _ in range(2):
        arch = s.random_arch(gen)
        slim = assert_hard_mode_is_the_slim_network(s, arch, x)
        # it really is another network, because of the pruning: the same weights unpruned differ
        unpruned = zeroing_oracle(s, s.full_arch())
        unpruned.load_state_dict(search_weights(s, arch))
        with torch.no_grad():
            out = slim(x)
            assert not torch.allclose(unpruned(x), out, atol=1e-3)
            assert (zeroing_oracle(s, arch)(x) - out).abs().max() <= 1e-4
        assert arch.flops < arch.full_flops
        # the slim BNs keep timm's fused activation
        assert type(slim.bn1) is BatchNormAct2d and type(slim.bn1.act) is type(model.bn1.act)


def test_arbitrary_indices_equivalence(supernet):
    """Non-prefix kept channels (SA++, the baselines) materialise exactly too."""
    s, _ = supernet
    arch = grouped_random_indices(s, s.random_arch(torch.Generator().manual_seed(1)), seed=1)
    assert any(g["indices"] != list(range(g["width"])) for g in arch.groups.values())
    assert_hard_mode_is_the_slim_network(s, arch, torch.randn(2, *SIZE))


def test_full_arch_reproduces_the_original(supernet):
    """The full architecture is the original network: same costs, same outputs (from the teacher's
    weights, and in hard mode from the supernet's, whose BNs were changed apart from the teacher's)."""
    s, model = supernet
    arch = s.full_arch()
    assert arch.flops == count_flops(model, SIZE) and arch.params == count_params(model)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert (materialize(model, arch).eval()(x) - model(x)).abs().max() <= 1e-5
        original_with_search_weights = copy.deepcopy(model)
        original_with_search_weights.load_state_dict(search_weights(s, arch))
        expected = original_with_search_weights(x)
        assert (s.set_arch(arch)(x) - expected).abs().max() <= 1e-5
        assert not torch.allclose(expected, model(x), atol=1e-3)  # the two checks differ


def test_materialise_from_plain_model(supernet):
    s, model = supernet
    arch = s.random_arch(torch.Generator().manual_seed(2))
    slim = materialize(model, arch)
    assert count_params(slim) == arch.params
    assert count_flops(slim, SIZE) == arch.flops
    assert torch.equal(slim.conv_stem.weight, model.conv_stem.weight[arch.groups["stem"]["indices"]])
    assert type(slim) is type(model)
    with torch.no_grad():
        assert slim.eval()(torch.randn(1, *SIZE)).shape == (1, 10)
    # with num_features / head_hidden_size synced, timm's reset_classifier works on the slim net
    slim.reset_classifier(5)  # materialize ran the family's finalizer (sync_head_attributes)
    with torch.no_grad():
        assert slim(torch.randn(1, *SIZE)).shape == (1, 5)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenetv3_large_100"])
def test_search_mode_forward_backward_reaches_arch_parameters(name):
    s = create_supernet(timm.create_model(name, num_classes=10), input_size=SIZE)
    s.train()
    s.generator = torch.Generator().manual_seed(0)
    s(torch.randn(4, *SIZE)).logsumexp(1).sum().backward()
    # Width logits get the task gradient through the Gumbel fragment mixture: in the per-candidate
    # BNs, or in the producing conv for a group no BN writes (MobileNetV3's head conv).
    params = [g.alpha for g in s.groups().values() if g.alpha is not None] + list(s.betas.values())
    assert params and all(p.grad is not None for p in params)
    assert all(float(p.grad.abs().sum()) > 0 for p in params)
    s.expected_cost("flops").backward()
    assert all(g.alpha.grad is not None for g in s.groups().values() if g.alpha is not None)


def _finite_difference(f, p: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Central differences of the scalar ``f()`` with respect to each entry of ``p``."""
    grad = torch.zeros_like(p)
    with torch.no_grad():
        for i in range(p.numel()):
            old = float(p.view(-1)[i])
            p.view(-1)[i] = old + eps
            up = float(f())
            p.view(-1)[i] = old - eps
            down = float(f())
            p.view(-1)[i] = old
            grad.view(-1)[i] = (up - down) / (2 * eps)
    return grad


def test_search_mode_gradient_of_bnless_head_width_is_the_task_loss_derivative():
    """MobileNetV3's head conv has no BN; its fragments are mixed at the conv. The width logits'
    gradient is the derivative of the loss (fixed Gumbel draws) and of the expected cost."""
    size = (3, 32, 32)
    s = create_supernet(timm.create_model("mobilenetv3_small_050", num_classes=10), input_size=size).double()
    s.train()
    s.tau = 1.0  # sharper mixing weights than the initial 5: larger, easily measured derivatives
    x = torch.randn(4, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    alpha = s.groups()["head"].alpha

    def loss() -> torch.Tensor:
        s.generator = torch.Generator().manual_seed(1)  # the same Gumbel draws every time
        return s(x).logsumexp(1).sum()

    loss().backward()
    expected = _finite_difference(loss, alpha)
    assert expected.abs().max() > 1e-3  # the head width matters to the loss
    assert torch.allclose(alpha.grad, expected, rtol=1e-4, atol=1e-7)
    alpha.grad = None
    s.expected_cost("flops").backward()
    cost = _finite_difference(lambda: s.expected_cost("flops"), alpha, eps=1e-3)
    assert cost.abs().max() > 0 and torch.allclose(alpha.grad.double(), cost, rtol=1e-3)


def test_graph_structure():
    g = describe_model(timm.create_model("mobilenetv2_100"))
    layers = {l.name: l for l in g.layers}
    # a depthwise-separable block has no expansion: its depthwise conv runs on the stem stream
    assert (layers["blocks.0.0.conv_dw"].in_group, layers["blocks.0.0.conv_dw"].out_group) == ("stem", "stem")
    assert layers["blocks.0.0.conv_pw"].out_group == "blocks.0"
    # the expanded width is one group from the expansion to the projection
    mid = "blocks.1.1.mid"
    assert layers["blocks.1.1.conv_pw"].out_group == mid
    assert (layers["blocks.1.1.conv_dw"].in_group, layers["blocks.1.1.conv_dw"].out_group) == (mid, mid)
    assert layers["blocks.1.1.conv_pwl"].in_group == mid
    # a stage's stream: first block's projection, the residual blocks' projections, the consumers
    assert {layers[f"blocks.3.{b}.conv_pwl"].out_group for b in range(4)} == {"blocks.3"}
    assert layers["blocks.4.0.conv_pw"].in_group == "blocks.3"
    assert layers["conv_head"].in_group == "blocks.6" and layers["classifier"].in_group == "head"
    assert layers["classifier"].out_group is None
    assert g.groups["head"].kind == "inner" and g.groups["blocks.3"].kind == "stream"

    g = describe_model(timm.create_model("efficientnet_b0"))
    layers = {l.name: l for l in g.layers}
    # SE: channel-facing sides follow the block's width, the bottleneck stays fixed
    reduce, expand = layers["blocks.0.0.se.conv_reduce"], layers["blocks.2.1.se.conv_expand"]
    assert (reduce.in_group, reduce.out_group) == ("stem", None)
    assert (expand.in_group, expand.out_group) == (None, "blocks.2.1.mid")

    # MobileNetV3: the first block has a skip, so the stem is also blocks.0's stream
    g = describe_model(timm.create_model("mobilenetv3_large_100"))
    layers = {l.name: l for l in g.layers}
    assert "blocks.0" not in g.groups and g.groups["stem"].kind == "stream"
    assert layers["blocks.0.0.conv_pw"].out_group == "stem"
    assert layers["blocks.6.0.conv"].out_group == "blocks.6"  # ConvBnAct
    assert layers["conv_head"].in_group == "blocks.6" and "bn2" not in layers


def test_stages_with_a_width_change_are_not_depth_searched():
    """A block without a skip after a stage's first can't be dropped: that stage keeps all blocks."""
    model = timm.create_model("lcnet_050", num_classes=10).eval()  # every block is noskip
    g = describe_model(model)
    assert list(g.stages) == ["blocks.0"]
    assert g.groups["blocks.4.1"].kind == "stream"  # a mid-stage width change starts a new group
    assert all(l.block is None for l in g.layers if l.name.startswith("blocks.4."))
    s = create_supernet(model, input_size=(3, 32, 32))
    perturb_bn(s)
    s.eval()
    arch = s.random_arch(torch.Generator().manual_seed(5))
    s.set_arch(arch)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        slim = materialize(s, arch).eval()
        assert (s(x) - slim(x)).abs().max() <= 1e-4
    assert count_flops(slim, (3, 32, 32)) == arch.flops and count_params(slim) == arch.params
    # fbnetv3_b: only the stage whose last block changes the width is left out
    assert "blocks.5" not in describe_model(timm.create_model("fbnetv3_b")).stages


def test_slice_bn_keeps_fused_activation():
    bn = BatchNormAct2d(16, act_layer=torch.nn.SiLU).eval()
    perturb_bn(bn)
    idx = torch.tensor([1, 4, 5, 9])
    sl = slice_bn(bn, idx)
    assert type(sl) is BatchNormAct2d and isinstance(sl.act, torch.nn.SiLU) and sl.num_features == 4
    x = torch.randn(2, 16, 3, 3)
    assert torch.allclose(sl(x[:, idx]), bn(x)[:, idx], atol=1e-6)
    plain = torch.nn.BatchNorm2d(16).eval()
    perturb_bn(plain)
    sl = slice_bn(plain, idx)
    assert type(sl) is torch.nn.BatchNorm2d and sl.running_var.shape == (4,)
    assert torch.allclose(sl(x[:, idx]), plain(x)[:, idx], atol=1e-6)


@pytest.mark.parametrize("name, what", [
    ("mixnet_s", "MixedConv2d"),
    ("efficientnet_cc_b0_4e", "CondConvResidual"),
    ("mobilenetv4_conv_small", "UniversalInvertedResidual"),
])
def test_unsupported_variants_are_refused(name, what):
    with pytest.raises(ModelError, match=what):
        describe_model(timm.create_model(name))


def test_vit_still_refused():
    with pytest.raises(ModelError, match="supported families are efficientnet, mobilenet, resnet"):
        describe_model(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8))
