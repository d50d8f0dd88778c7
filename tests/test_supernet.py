"""The supernet's main contract: hard mode == the materialised slim network, with exact costs."""
import pytest
import timm
import torch
from conftest import assert_hard_mode_is_the_slim_network, grouped_random_indices, perturb_bn

import tas  # noqa: F401
from tas.prune.arch import Arch
from tas.errors import ArchError, ModelError, TasError
from tas.prune.flops import count_flops, count_params
from tas.prune.materialize import materialize
from tas.nas.space import load_space
from tas.nas.supernet import create_supernet

MODELS = [
    ("cifar_resnet20", (1, 32, 32)),
    ("resnet18", (3, 64, 64)),
    ("resnet50", (3, 64, 64)),
    ("seresnext26d_32x4d", (3, 64, 64)),
    ("ecaresnet26t", (3, 64, 64)),
]


@pytest.fixture(scope="module", params=MODELS, ids=[m for m, _ in MODELS])
def supernet(request):
    name, size = request.param
    model = timm.create_model(name, num_classes=7, in_chans=size[0]).eval()
    s = create_supernet(model, input_size=size, model_name=name)
    perturb_bn(s)
    return s.eval(), model, size


def test_hard_mode_equals_materialised(supernet):
    s, _, size = supernet
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *size)
    for _ in range(3):
        assert_hard_mode_is_the_slim_network(s, s.random_arch(gen), x)


def test_arbitrary_indices_equivalence(supernet):
    """Non-prefix kept channels (what SA++ and the baselines produce) materialise exactly too."""
    s, _, size = supernet
    arch = grouped_random_indices(s, s.random_arch(torch.Generator().manual_seed(1)), seed=1)
    assert any(g["indices"] != list(range(g["width"])) for g in arch.groups.values())
    assert_hard_mode_is_the_slim_network(s, arch, torch.randn(2, *size))


def test_materialise_from_plain_teacher_keeps_its_weights(supernet):
    s, model, size = supernet
    arch = s.random_arch(torch.Generator().manual_seed(2))
    slim = materialize(model, arch)
    name, conv = next((n, m) for n, m in slim.named_modules() if isinstance(m, torch.nn.Conv2d))
    idx = arch.groups["stem.0" if "stem.0" in arch.groups else "stem"]["indices"]
    assert torch.equal(conv.weight, model.get_submodule(name).weight[idx])
    assert count_params(slim) == arch.params


def test_full_arch_reproduces_the_original():
    model = timm.create_model("cifar_resnet20", num_classes=10).eval()
    s = create_supernet(model, input_size=(3, 32, 32)).eval()
    arch = s.full_arch()
    s.set_arch(arch)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(s(x), model(x), atol=1e-5)
    assert arch.flops == count_flops(model, (3, 32, 32)) and arch.params == count_params(model)


def test_expected_cost_equals_exact_at_one_hot():
    s = create_supernet(timm.create_model("resnet50", num_classes=10), input_size=(3, 64, 64))
    arch = s.random_arch(torch.Generator().manual_seed(3))
    _one_hot_logits(s, arch)
    for metric in ("flops", "params"):
        assert s.expected_cost(metric).item() == pytest.approx(getattr(arch, metric), rel=1e-5)
    assert s.derive_arch().flops == arch.flops


def _one_hot_logits(s, arch) -> None:
    """Put all of softmax(α) and softmax(β) on ``arch``'s widths and depths (exactly, in float32)."""
    with torch.no_grad():
        for n, g in s.groups().items():
            if g.alpha is not None:
                g.alpha.fill_(-1e4)
                g.alpha[g.widths.index(arch.groups[n]["width"])] = 0
        for n, beta in s.betas.items():
            stage = n.replace("__", ".")
            beta.fill_(-1e4)
            beta[s.stage_depths[stage].index(arch.stages[stage]["depth"])] = 0


def test_expected_cost_and_its_gradient_against_counted_candidates():
    """With one group (or stage) soft and the rest one-hot, E = Σ_j p_j c_j where c_j is the
    counted cost of the materialised network at candidate j, so dE/dα_i = p_i (c_i − E)."""
    s = create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 16, 16))
    base = s.random_arch(torch.Generator().manual_seed(5))
    widths, depths = base.widths, base.depths
    for kind, name in (("width", "layer2.0.conv1"), ("width", "layer3"), ("depth", "layer2")):
        _one_hot_logits(s, base)
        if kind == "width":
            cands, logits = s.groups()[name].widths, s.groups()[name].alpha
            archs = [s.make_arch({**widths, name: w}, depths) for w in cands]
        else:
            cands, logits = s.stage_depths[name], s.betas[name]
            archs = [s.make_arch(widths, {**depths, name: d}) for d in cands]
        with torch.no_grad():
            logits.copy_(torch.tensor([0.4, -0.3, 0.9, 0.1, -0.8, 0.2, 0.6][:len(cands)]))
        p = torch.softmax(logits.detach().double(), 0)
        slims = [materialize(s.template, a) for a in archs]  # the plain network: no cost model involved
        for metric, count in (("flops", lambda m: count_flops(m, (3, 16, 16))), ("params", count_params)):
            c = torch.tensor([float(count(m)) for m in slims], dtype=torch.float64)
            assert len(set(c.tolist())) == len(cands), (name, c)  # every candidate costs something else
            expected = s.expected_cost(metric)
            (grad,) = torch.autograd.grad(expected, logits)
            hand = float((p * c).sum())
            assert expected.item() == pytest.approx(hand, rel=1e-5), (metric, name)
            assert torch.allclose(grad.double(), p * (c - hand), rtol=1e-4, atol=1e-6 * float(c.max())), (metric, name)


def test_search_mode_gradient_is_the_derivative_of_the_forward():
    """The α/β gradient of a search-mode forward (Gumbel noise fixed) equals central finite
    differences of that forward: the mixing weights carry α and β, and nothing cuts them off."""
    torch.manual_seed(0)
    s = create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 8, 8)).double().eval()
    perturb_bn(s)
    with torch.no_grad():
        for p in s.arch_parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    probe = torch.randn(2, 10, dtype=torch.float64)

    def loss() -> torch.Tensor:
        s.generator = torch.Generator().manual_seed(3)  # the same noise and the same fragments each time
        return (s(x) * probe).sum()

    params = list(s.arch_parameters())
    grads = torch.autograd.grad(loss(), params)
    # every sampled width candidate and one unsampled one (whose α must not matter), every depth
    entries = []
    for g in s.groups().values():
        if g.alpha is not None:
            chosen = [f[0] for f in g.fragments]
            entries += [(g.alpha, j) for j in chosen]
            entries += [(g.alpha, j) for j in range(len(g.widths)) if j not in chosen][:1]
    entries += [(b, j) for b in s.betas.values() for j in range(b.numel())]
    grad_of = {id(p): g for p, g in zip(params, grads)}
    h, moved = 1e-5, 0
    with torch.no_grad():
        for p, i in entries:
            old = p[i].item()
            p[i] = old + h
            up = loss().item()
            p[i] = old - h
            down = loss().item()
            p[i] = old
            fd = (up - down) / (2 * h)
            assert grad_of[id(p)][i].item() == pytest.approx(fd, rel=1e-4, abs=1e-8), (p.shape, i)
            moved += fd != 0
    assert moved >= len(entries) // 2


def test_width_candidates_follow_space():
    s = create_supernet(timm.create_model("seresnext26d_32x4d"), input_size=(3, 64, 64))
    for name, g in s.groups().items():
        conv_groups = s.graph.groups[name].conv_groups
        assert all(w % conv_groups == 0 for w in g.widths)
        assert g.widths[-1] == g.channels
    assert s.groups()["layer1.0.conv2"].widths == [32, 64, 96, 128]
    space = load_space("cifar_resnet")
    assert space.k == 2 and space.ratios[0] == 0.3


def test_depth_rules_and_the_fine_cifar_space():
    m = timm.create_model("cifar_resnet56")
    for rule, depths in (("cifar", [1, 3, 5, 7, 9]), ("every", list(range(1, 10))), ("none", [9])):
        s = create_supernet(m, space={"ratios": [0.5, 1.0], "divisor": 8, "depth": rule}, input_size=(3, 8, 8))
        assert all(d == depths for d in s.stage_depths.values()), (rule, s.stage_depths)
    fine = create_supernet(m, space="cifar_resnet_fine", input_size=(3, 8, 8))
    # every block count, and the 16-channel stage-1 stream in steps of 4 instead of {8, 16}
    assert fine.stage_depths["layer1"] == list(range(1, 10))
    assert fine.groups()["stem"].widths == [4, 8, 12, 16]
    assert create_supernet(m, space="cifar_resnet", input_size=(3, 8, 8)).groups()["stem"].widths == [8, 16]


def test_infeasible_target_names_smallest_ratio():
    s = create_supernet(timm.create_model("cifar_resnet20"), input_size=(3, 32, 32))
    with pytest.raises(TasError, match=r"smallest architecture .* keeps 0\.0"):
        s.check_target("flops", 0.01)
    s.check_target("flops", 0.5)


def test_bad_spaces_and_models():
    with pytest.raises(TasError, match="unknown keys"):
        load_space({"ratios": [0.5, 1.0], "colour": "red"})
    with pytest.raises(TasError, match=r"\(0, 1\]"):
        load_space({"ratios": [0.5, 1.5]})
    with pytest.raises(TasError, match="not found"):
        load_space("no_such_space")
    with pytest.raises(TasError, match="cifar_resnet_fine is for the resnet family, the model is efficientnet"):
        create_supernet(timm.create_model("cifar_mobilenetv2_050"), space="cifar_resnet_fine", input_size=(3, 8, 8))
    with pytest.raises(ModelError, match="supported families are .*resnet"):
        create_supernet(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8), input_size=(3, 32, 32))


def test_arch_json_round_trip_and_validation(tmp_path):
    s = create_supernet(timm.create_model("cifar_resnet20"), input_size=(3, 32, 32))
    arch = s.random_arch(torch.Generator().manual_seed(4))
    arch.to_json(tmp_path / "arch.json")
    back = Arch.from_json(tmp_path / "arch.json")
    assert back == arch
    d = arch.to_dict()
    d["version"] = 99
    with pytest.raises(ArchError, match="newer"):
        Arch.from_dict(d)
    d = arch.to_dict()
    del d["flops"]
    with pytest.raises(ArchError, match="missing field 'flops'"):
        Arch.from_dict(d)
    d = arch.to_dict()
    d["groups"]["stem"]["width"] = 99
    with pytest.raises(ArchError, match="width 99"):
        Arch.from_dict(d)
    other = create_supernet(timm.create_model("cifar_resnet32"), input_size=(3, 32, 32)).full_arch()
    with pytest.raises(ArchError):
        s.set_arch(other)


@pytest.mark.parametrize("ranked", [False, True], ids=["prefix", "ranked"])
def test_recalibrate_bn_gives_hard_mode_batch_statistics(ranked):
    """After recalibration each kept BN holds the mean of its input's per-batch mean and unbiased
    variance over the first ``batches`` batches, in the network hard mode computes: measured here
    on the materialised network in training mode (which normalises with batch statistics too)."""
    from tas.nas.searcher import recalibrate_bn

    s = create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 16, 16))
    perturb_bn(s)
    for m in s.modules():  # statistics of 50 earlier batches, as after a search's weight steps
        if isinstance(m, torch.nn.BatchNorm2d):
            m.num_batches_tracked.fill_(50)
    gen = torch.Generator().manual_seed(6)
    arch = s.random_arch(gen)
    if ranked:  # arbitrary kept channels: the running statistics are gathered and written back
        for g in arch.groups.values():
            g["indices"] = sorted(torch.randperm(g["channels"], generator=gen)[: g["width"]].tolist())
    s.set_arch(arch).eval()
    data = [(torch.randn(8, 3, 16, 16, generator=gen), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    recalibrate_bn(s, data, "cpu", batches=2)
    assert not s.training and all(m.momentum == 0.1 for m in s.modules() if isinstance(m, torch.nn.BatchNorm2d))

    slim = materialize(s, arch).train()
    seen: dict[str, list[torch.Tensor]] = {}
    for name, m in slim.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda mod, inp, n=name: seen.setdefault(n, []).append(inp[0].detach()))
    with torch.no_grad():
        for x, _ in data[:2]:
            slim(x)
    assert len(seen) >= 10
    for name, inputs in seen.items():
        mean = torch.stack([t.mean((0, 2, 3)) for t in inputs]).mean(0)
        var = torch.stack([t.var((0, 2, 3), unbiased=True) for t in inputs]).mean(0)
        search_bn = s.model.get_submodule(name)
        group = search_bn.group[0]
        bn = search_bn.bns[group.hard_candidate]
        kept = torch.tensor(arch.groups[group.name]["indices"])
        assert torch.allclose(bn.running_mean[kept], mean, rtol=1e-4, atol=1e-5), name
        assert torch.allclose(bn.running_var[kept], var, rtol=1e-4, atol=1e-5), name


def test_resnet_refuses_a_conv_subclass_that_does_not_slice_exactly():
    """timm's StdConv2d is an nn.Conv2d that standardises its weight over all input channels in
    forward, so a sliced copy would compute something else: the adapter names it and refuses."""
    from timm.layers import StdConv2d

    model = timm.create_model("resnet18", num_classes=10).eval()
    old = model.layer1[0].conv1
    model.layer1[0].conv1 = StdConv2d(old.in_channels, old.out_channels, 3, padding=1, bias=False)
    with pytest.raises(ModelError, match=r"unsupported ResNet variant: layer1\.0\.conv1 is a StdConv2d"):
        create_supernet(model, input_size=(3, 32, 32), model_name="resnet18")


@pytest.mark.parametrize("model,size", [("cifar_resnet20", (3, 16, 16)), ("resnet18", (3, 32, 32))])
def test_vectorised_expected_cost_equals_the_term_sum(model, size):
    """Supernet.expected_cost (the padded tables) against CostModel.expected (one term at a time) with
    every group and stage soft at once, plain and sharpened: values and the α/β gradients."""
    s = create_supernet(timm.create_model(model, num_classes=10), input_size=size).double()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in s.arch_parameters():
            p.copy_(torch.randn(p.shape))
    params = list(s.arch_parameters())
    assert len(s.betas) > 0
    for temperature in (1.0, 0.3):
        with s.sharpened(temperature):
            wp = {n: (g.probs(), torch.tensor(g.widths, dtype=torch.float64)) for n, g in s.groups().items()}
            dp = {n: (s.depth_probs(n), torch.tensor(s.stage_depths[n])) for n in s.graph.stages}
            for metric in ("flops", "params"):
                ref = s.cost.expected(metric, wp, dp)
                new = s.expected_cost(metric)
                assert new.item() == pytest.approx(ref.item(), rel=1e-9), (metric, temperature)
                g_ref = torch.autograd.grad(ref, params, retain_graph=True)
                g_new = torch.autograd.grad(new, params)
                for a, b in zip(g_ref, g_new):
                    assert torch.allclose(a, b, rtol=1e-7, atol=1e-9 * ref.item())


def test_recalibrate_bn_with_a_seed_sees_the_same_batches_every_time():
    """A shuffling loader's generator advances with each pass: with ``seed`` every call calibrates on
    the first pass's batches, without it the second call sees others."""
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    from tas.nas.calibrate import recalibrate_bn

    data = TensorDataset(torch.randn(64, 3, 4, 4), torch.zeros(64, dtype=torch.long))
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(data, batch_size=8, sampler=RandomSampler(data, generator=gen), generator=gen)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))

    def stats(**kw):
        recalibrate_bn(model, loader, "cpu", batches=2, **kw)
        return model[0].running_mean.clone()

    first = stats(seed=0)
    assert torch.equal(stats(seed=0), first)
    loader.generator.manual_seed(0)
    assert torch.equal(stats(), first) and not torch.equal(stats(), first)  # the generator moved on
