"""Importance-ordered channels: the permutation keeps the function, and a prefix keeps the best channels."""
import pytest
import timm
import torch
import torch.nn.functional as F

import tas  # noqa: F401  (registers cifar_resnet*)
from tas.prune.arch import Arch
from tas.prune.channel_order import (channel_scores, importance_permutations, order_channels, permute_channels, to_original)
from tas.prune.families import describe_model
from tas.prune.materialize import materialize

from conftest import perturb_bn


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    perturb_bn(model)  # distinct BN statistics, so a channel paired with the wrong BN shows
    return model


@pytest.mark.parametrize("name,size", [("cifar_resnet20", 16), ("seresnext26d_32x4d", 32),
                                       ("efficientnet_b0", 32), ("mobilenetv3_large_100", 32)])
def test_permutation_keeps_the_function(name, size):
    model = _model(name)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        before = model(x)
    graph = describe_model(model)
    g = torch.Generator().manual_seed(1)
    perms = importance_permutations(graph, {n: torch.rand(gr.channels, generator=g) for n, gr in graph.groups.items()})
    moved = [n for n, p in perms.items() if not torch.equal(p, torch.arange(p.numel()))]
    assert len(moved) == len(graph.groups)  # every group really is reordered
    permute_channels(model, perms, graph)
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max() <= 1e-5 * max(1.0, before.abs().max().item())


def test_grouped_conv_groups_share_one_local_order():
    graph = describe_model(timm.create_model("seresnext26d_32x4d"))
    grouped = [n for n, g in graph.groups.items() if g.conv_groups > 1]
    assert grouped
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(gr.channels, generator=g) for n, gr in graph.groups.items()}
    perms = importance_permutations(graph, scores)
    for n in grouped:
        gr = graph.groups[n]
        per = gr.channels // gr.conv_groups
        p = perms[n].view(gr.conv_groups, per)
        local = torch.argsort(scores[n].view(gr.conv_groups, per).sum(0), descending=True)  # independent ranking
        assert torch.equal(p - p[:, :1] + p[0, 0], p[:1].expand_as(p))  # one local order everywhere
        assert torch.equal(p[0], local)
        assert torch.equal(p[:, 0] // per, torch.arange(gr.conv_groups))  # nothing leaves its conv group


def test_bn_order_puts_largest_gamma_sum_first():
    model = _model("cifar_resnet20")
    orig = {n: m.weight.detach().abs().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    perms = order_channels(model, "bn")
    # layer2's stream: every block's last BN and the downsample's, each divided by its mean (independent sum)
    names = ["layer2.0.bn2", "layer2.1.bn2", "layer2.2.bn2", "layer2.0.downsample.1"]
    expected = sum(orig[n] / orig[n].mean() for n in names)
    top = set(torch.topk(expected, 16).indices.tolist())
    assert set(perms["layer2"][:16].tolist()) == top
    # on the permuted model the scores read in descending order: the prefix holds the best channels
    after = channel_scores(model, "bn")["layer2"]
    assert torch.all(after[:-1] >= after[1:] - 1e-6)
    assert torch.allclose(after, expected[perms["layer2"]], atol=1e-5)


def test_filters_order_sums_the_producers_filter_l1_unnormalised():
    """``filters`` (the l1 baseline's criterion): Σ|W| of every filter writing the group, as is."""
    model = _model("cifar_resnet20")
    names = ["layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2", "layer2.0.downsample.0"]
    with torch.no_grad():  # one producer far larger than the rest: normalising would hide it
        model.get_submodule(names[0]).weight.mul_(50)
    orig = {n: model.get_submodule(n).weight.detach().abs().flatten(1).sum(1).double().clone() for n in names}
    expected = sum(orig.values())
    perms = order_channels(model, "filters")
    assert set(perms["layer2"][:16].tolist()) == set(torch.topk(expected, 16).indices.tolist())
    after = channel_scores(model, "filters")["layer2"]
    assert torch.allclose(after, expected[perms["layer2"]], rtol=1e-6)
    assert torch.all(after[:-1] >= after[1:])


def test_l1_order_is_descending_on_the_permuted_model():
    model = _model("cifar_resnet20")
    order_channels(model, "l1")
    for n, s in channel_scores(model, "l1").items():
        assert torch.all(s[:-1] >= s[1:] - 1e-5), n


def test_taylor_scores_match_activation_gradient_products():
    model = _model("cifar_resnet20")
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    scores = channel_scores(model, "taylor", batches=[(x, y)])
    # independent: Σ_{n,h,w} y·∂L/∂y at the only BN of an inner group equals γ∂L/∂γ + β∂L/∂β
    out = {}

    def keep(module, inputs, output):
        output.retain_grad()
        out["y"] = output

    h = model.layer1[1].bn1.register_forward_hook(keep)
    F.cross_entropy(model(x), y).backward()
    h.remove()
    expected = (out["y"] * out["y"].grad).sum(dim=(0, 2, 3)).pow(2)
    assert torch.allclose(scores["layer1.1.conv1"], expected, rtol=1e-4, atol=1e-10)
    assert expected.max() > 0


def test_eca_groups_keep_their_order():
    model = timm.create_model("ecaresnet26t").eval()
    graph = describe_model(model)
    perms = importance_permutations(graph, {n: torch.rand(g.channels) for n, g in graph.groups.items()})
    eca = {l.in_group for l in graph.layers if l.kind == "channel_conv"}
    assert eca and all(torch.equal(perms[n], torch.arange(graph.groups[n].channels)) for n in eca)
    bad = dict(perms)
    n = next(iter(eca))
    bad[n] = torch.arange(graph.groups[n].channels).flip(0)
    with pytest.raises(ValueError, match="ECA"):
        permute_channels(model, bad, graph)


def test_arch_indices_map_back_to_the_original_channels():
    original = _model("cifar_resnet20")
    ordered = _model("cifar_resnet20")
    perms = order_channels(ordered, "l1")
    supernet = tas.create_supernet(ordered, input_size=(3, 16, 16))
    arch = supernet.make_arch({n: g.widths[1] for n, g in supernet.groups().items()},
                              {n: d[0] for n, d in supernet.stage_depths.items()})
    mapped = to_original(arch, perms)
    assert mapped.widths == arch.widths and mapped.flops == arch.flops
    assert any(mapped.groups[n]["indices"] != arch.groups[n]["indices"] for n in arch.groups)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = materialize(ordered, arch)(x)
        b = materialize(original, Arch.from_dict(mapped.to_dict()))(x)
    assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max().item())
