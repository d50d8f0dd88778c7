"""Baseline pruners: L1 keeps the largest norms, SynFlow matches hand-computed scores without data,
every baseline meets its budget within the space's rounding, and search.py --method end to end."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import perturb_bn, zeroing_oracle

import tas
import tas.data
from tas.prune.arch import Arch
from tas.baselines import create_baseline_arch, list_baselines, max_step_cost, synflow_scores, width_only_minimum
from tas.baselines.magnitude import l1_channel_scores, top_channels
from tas.baselines.random_arch import random_scales
from tas.baselines.scaling import COMPOUND_DEPTH_EXPONENT
from tas.baselines.synflow import synflow_channel_scores
from tas.cli import run_main
from tas.errors import TasError
from tas.prune.flops import count_flops, count_params
from tas.prune.load import load_run
from tas.nas.supernet import create_supernet

REPO = Path(__file__).resolve().parents[1]
SIZE = (1, 16, 16)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = tas.create_model("cifar_resnet20", num_classes=10, in_chans=1)
    return perturb_bn(model, seed).eval()  # trained-looking BN statistics, so BN is not the identity


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def supernet(model):
    return create_supernet(model, input_size=SIZE, model_name="cifar_resnet20")


@pytest.fixture
def no_data(monkeypatch):
    """Any attempt to read a dataset fails the test."""
    def refuse(*a, **k):
        raise AssertionError("a data-free baseline read data")
    for name in ("create_loaders", "create_dataset"):
        monkeypatch.setattr(tas.data, name, refuse)


def _arch(method, model, ratio, **kw):
    return create_baseline_arch(method, model, ratio, input_size=SIZE, model_name="cifar_resnet20", **kw)


# ---- the budget ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["uniform", "l1", "random", "synflow"])
def test_every_baseline_meets_its_target_within_rounding(method, model, supernet, no_data):
    step = max_step_cost(supernet, "flops")
    for ratio in (0.7, 0.5, 0.3):
        arch = _arch(method, model, ratio)
        target = ratio * arch.full_flops
        assert arch.method == method and arch.meta["target_ratio"] == ratio
        assert target - step <= arch.flops <= target, (ratio, arch.flops_ratio, step / arch.full_flops)
        assert arch.depths == {n: s.num_blocks for n, s in supernet.graph.stages.items()}
        for n, g in supernet.groups().items():
            assert arch.groups[n]["width"] in g.widths
            assert len(arch.groups[n]["indices"]) == arch.groups[n]["width"]
        slim = tas.materialize(model, arch)
        assert count_flops(slim, SIZE) == arch.flops and count_params(slim) == arch.params
        Arch.from_json(arch.to_json())  # a valid spec


def test_params_budget_and_refusals(model, supernet):
    step = max_step_cost(supernet, "params")
    for method in ("uniform", "synflow"):
        arch = _arch(method, model, 0.5, metric="params")
        assert 0.5 * arch.full_params - step <= arch.params <= 0.5 * arch.full_params
    with pytest.raises(TasError, match="unreachable"):
        _arch("l1", model, 0.01)
    with pytest.raises(TasError, match="unknown baseline"):
        _arch("magnitude", model, 0.5)
    assert list_baselines() == ["l1", "plasticity", "random", "random-arch", "synflow", "task-aware", "undecayed",
                                "uniform", "uniform-depth"]


def test_uniform_is_uniform_and_random_is_seeded(model, supernet):
    arch = _arch("uniform", model, 0.5)
    r = arch.meta["uniform_ratio"]
    for n, g in supernet.groups().items():  # each width is a closest candidate to r*C (ties allowed)
        best = min(abs(w - r * g.channels) for w in g.widths)
        assert abs(arch.groups[n]["width"] - r * g.channels) == pytest.approx(best)
        assert arch.groups[n]["indices"] == list(range(arch.groups[n]["width"]))  # prefix
    a, b, c = (_arch("random", model, 0.5, seed=s) for s in (0, 0, 1))
    assert a.widths == arch.widths == c.widths
    assert a.groups == b.groups and a.groups != c.groups


# ---- uniform-depth (compound scaling) --------------------------------------------------------
def _closest(x: float, candidates) -> set:
    """Every candidate at the smallest distance from ``x`` (ties: all of them)."""
    best = min(abs(c - x) for c in candidates)
    return {c for c in candidates if abs(c - x) == pytest.approx(best)}


def test_uniform_depth_reaches_ratios_width_only_cannot(model, supernet, no_data):
    k = COMPOUND_DEPTH_EXPONENT
    assert width_only_minimum(supernet, "flops") > 0.12
    with pytest.raises(TasError, match="unreachable"):
        _arch("uniform", model, 0.12)
    full_depth = {n: s.num_blocks for n, s in supernet.graph.stages.items()}
    scales = np.linspace(0.002, 1.0, 1000)
    for ratio in (0.5, 0.25, 0.12):
        arch = _arch("uniform-depth", model, ratio)
        target = ratio * arch.full_flops
        assert arch.method == "uniform-depth" and arch.flops <= target
        assert any(arch.depths[n] < d for n, d in full_depth.items())
        slim = tas.materialize(model, arch)
        assert count_flops(slim, SIZE) == arch.flops and count_params(slim) == arch.params
        # it is a uniform point: at its scale w every width is closest to w*C, every depth to w^k*N
        w = arch.meta["uniform_ratio"]
        for n, g in supernet.groups().items():
            assert arch.groups[n]["width"] in _closest(w * g.channels, g.widths), n
            assert arch.groups[n]["indices"] == list(range(arch.groups[n]["width"]))
        for n, N in full_depth.items():
            assert arch.depths[n] in _closest(w ** k * N, supernet.stage_depths[n]), n
        # ... and no point of a fine grid of scales that fits the budget is bigger
        fitting = []
        for s in scales:
            widths = {n: min(g.widths, key=lambda c: abs(c - s * g.channels)) for n, g in supernet.groups().items()}
            depths = {n: min(supernet.stage_depths[n], key=lambda c: abs(c - s ** k * N)) for n, N in full_depth.items()}
            cost = supernet.cost.exact("flops", widths, depths)
            if cost <= target:
                fitting.append(cost)
        assert max(fitting) <= arch.flops, (ratio, max(fitting) / arch.full_flops, arch.flops_ratio)
    assert all(d == 1 for d in arch.depths.values())  # at 0.12 every stage is down to one block


# ---- random-arch (a random allocation) --------------------------------------------------------
def test_random_arch_is_a_seeded_scaled_point_with_l1_channels(model, supernet, no_data):
    k = COMPOUND_DEPTH_EXPONENT
    full_depth = {n: s.num_blocks for n, s in supernet.graph.stages.items()}
    scores = l1_channel_scores(model, supernet.graph)
    scales = np.linspace(0.002, 3.0, 1500)
    archs = {}
    for seed in (0, 1):
        width_scale, depth_scale = random_scales(supernet, seed)
        assert len(set(width_scale.values())) == len(width_scale)  # one factor per group, not one shared
        for ratio in (0.5, 0.12):
            arch = archs[seed, ratio] = _arch("random-arch", model, ratio, seed=seed)
            target = ratio * arch.full_flops
            assert arch.method == "random-arch" and arch.flops <= target
            assert count_flops(tas.materialize(model, arch), SIZE) == arch.flops
            # at its scale w every width is closest to s_g*w*C and every depth to (s*w)^k*N ...
            w = arch.meta["uniform_ratio"]
            for n, g in supernet.groups().items():
                assert arch.groups[n]["width"] in _closest(width_scale[n] * w * g.channels, g.widths), n
                assert arch.groups[n]["indices"] == top_channels(scores[n], arch.groups[n]["width"], g.conv_groups)
            for n, N in full_depth.items():
                assert arch.depths[n] in _closest(min(1.0, depth_scale[n] * w) ** k * N, supernet.stage_depths[n]), n
            # ... and no point of a fine grid of scales with the same factors that fits the budget is bigger
            fitting = []
            for x in scales:
                widths = {n: min(g.widths, key=lambda c: abs(c - width_scale[n] * x * g.channels))
                          for n, g in supernet.groups().items()}
                depths = {n: min(supernet.stage_depths[n], key=lambda c: abs(c - (depth_scale[n] * x) ** k * N))
                          for n, N in full_depth.items()}
                cost = supernet.cost.exact("flops", widths, depths)
                if cost <= target:
                    fitting.append(cost)
            assert max(fitting) <= arch.flops, (seed, ratio)
    assert _arch("random-arch", model, 0.5, seed=0).groups == archs[0, 0.5].groups  # seeded
    assert archs[0, 0.5].widths != archs[1, 0.5].widths  # another seed spreads the budget differently
    assert archs[0, 0.5].widths != _arch("uniform-depth", model, 0.5).widths


# ---- L1 --------------------------------------------------------------------------------------
def _set_filter_norms(conv: nn.Conv2d, norms: torch.Tensor) -> None:
    """Give filter ``o`` of ``conv`` an L1 norm of exactly ``norms[o]`` (random signs)."""
    with torch.no_grad():
        w = torch.randn_like(conv.weight).sign()
        conv.weight.copy_(w * (norms.view(-1, 1, 1, 1) / w[0].numel()))


def test_l1_keeps_exactly_the_largest_norm_channels():
    model = _model(1)
    gen = torch.Generator().manual_seed(3)
    # an inner group has one producer; its norms are a known permutation
    perm = torch.randperm(64, generator=gen).double() + 1
    _set_filter_norms(model.layer3[1].conv1, perm)
    # the layer3 stream has four producers: the sum decides, not any single one
    producers = [model.layer3[0].downsample[0], model.layer3[0].conv2, model.layer3[1].conv2, model.layer3[2].conv2]
    parts = [torch.rand(64, generator=gen, dtype=torch.float64) for _ in producers]
    parts[0] = parts[0] + 10 * torch.arange(64, dtype=torch.float64) / 64  # alone it would favour high ids
    parts[1] = parts[1] + 12 * torch.arange(63, -1, -1, dtype=torch.float64) / 64  # ... and this one low ids
    for conv, p in zip(producers, parts):
        _set_filter_norms(conv, p)
    total = sum(parts)
    arch = _arch("l1", model, 0.5)
    w_inner, w_stream = arch.groups["layer3.1.conv1"]["width"], arch.groups["layer3"]["width"]
    assert w_inner < 64 and w_stream < 64
    assert arch.groups["layer3.1.conv1"]["indices"] == sorted(perm.argsort(descending=True)[:w_inner].tolist())
    assert arch.groups["layer3"]["indices"] == sorted(total.argsort(descending=True)[:w_stream].tolist())
    scores = l1_channel_scores(model, create_supernet(model, input_size=SIZE).graph)
    assert torch.allclose(scores["layer3"], total, rtol=1e-5)


def test_top_channels_grouped_keeps_same_local_positions():
    # 2 conv groups of 4 channels: local sums [1+3, 5+0, 2+4, 0+1] = [4, 5, 6, 1]
    scores = torch.tensor([1.0, 5, 2, 0, 3, 0, 4, 1])
    assert top_channels(scores, 4, conv_groups=2) == [1, 2, 5, 6]
    assert top_channels(scores, 4) == [1, 2, 4, 6]
    assert top_channels(torch.zeros(4), 2) == [0, 1]  # ties: lower index first


# ---- SynFlow ---------------------------------------------------------------------------------
def test_synflow_scores_two_linear_layers_by_hand(no_data):
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.25, 1.0]]))
        net[2].weight.copy_(torch.tensor([[-2.0, 3.0]]))
    s = synflow_scores(net, (3,))
    # R = Σ_j |v_j| Σ_i |W_ji|;  ∂R/∂|W_ji| = |v_j|;  ∂R/∂|v_j| = Σ_i |W_ji|
    assert torch.allclose(s["0.weight"], torch.tensor([[2.0, 4.0, 6.0], [1.5, 0.75, 3.0]], dtype=torch.float64))
    assert torch.allclose(s["2.weight"], torch.tensor([[12.0, 5.25]], dtype=torch.float64))
    assert net[0].weight[0, 1] == -2.0  # the model is untouched


def test_synflow_scores_conv_bn_linear_by_hand():
    # 1x1 conv (1 -> 2 channels) on a 2x2 all-ones image, BN in eval mode, flatten, linear 8 -> 1
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 1, bias=False))
    a, gamma, beta, var = torch.tensor([-1.5, 2.0]), torch.tensor([0.5, -2.0]), torch.tensor([-0.1, 0.3]), torch.tensor([4.0, 0.25])
    v = torch.arange(1.0, 9.0) * torch.tensor([1, -1] * 4)
    with torch.no_grad():
        net[0].weight.copy_(a.view(2, 1, 1, 1))
        net[1].weight.copy_(gamma)
        net[1].bias.copy_(beta)
        net[1].running_var.copy_(var)
        net[1].running_mean.copy_(torch.tensor([5.0, -7.0]))  # ignored: the linearised BN has mean 0
        net[3].weight.copy_(v.view(1, 8))
    s = synflow_scores(net, (1, 2, 2))
    scale = gamma.abs().double() / torch.sqrt(var.double() + net[1].eps)
    vsum = v.abs().double().view(2, 4).sum(1)  # flatten is channel-major: features 0..3 are channel 0
    assert torch.allclose(s["0.weight"].flatten(), a.abs().double() * scale * vsum)
    assert torch.allclose(s["1.bias"], beta.abs().double() * vsum)
    h = a.abs().double() * scale + beta.abs().double()  # each channel's (constant) BN output
    assert torch.allclose(s["3.weight"].view(2, 4), v.abs().double().view(2, 4) * h.view(2, 1))


def test_synflow_single_round_keeps_top_scored_channels(model, supernet, no_data):
    arch = _arch("synflow", model, 0.5, rounds=1)
    scores = synflow_channel_scores(synflow_scores(model, SIZE), supernet.graph)
    for n, g in supernet.groups().items():
        w = arch.groups[n]["width"]
        assert arch.groups[n]["indices"] == top_channels(scores[n], w, g.conv_groups), n
    iterative = _arch("synflow", model, 0.5)
    assert iterative.meta["rounds"] == 20 and len(iterative.meta["round_ratios"]) == 20
    assert iterative.meta["round_ratios"] == sorted(iterative.meta["round_ratios"], reverse=True)


# ---- search.py --method ----------------------------------------------------------------------
def test_search_py_method_uniform_end_to_end(tmp_path, teacher_run, capsys):
    out = tmp_path / "uniform"
    cmd = [sys.executable, "search.py", "--method", "uniform", "--teacher", str(teacher_run), "--dataset", "digits",
           "--limit", "64", "--flops-ratio", "0.5", "--device", "cpu", "--no-progress", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "test top-1, pruned" in proc.stdout
    arch = Arch.from_json(out / "arch.json")
    assert arch.method == "uniform" and arch.flops_ratio <= 0.5
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "uniform" and metrics["flops"] == arch.flops
    assert metrics["flops_ratio"] == pytest.approx(arch.flops_ratio) and "params_ratio" in metrics
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "search" and config["search"]["method"] == "uniform"
    slim = tas.load_slim(out)
    assert count_flops(slim, arch.input_size) == arch.flops
    assert slim(torch.randn(2, *arch.input_size)).shape == (2, 10)
    # in process (faster): an existing run is not overwritten; an infeasible target names the minimum
    spec = importlib.util.spec_from_file_location("search_script_baselines", REPO / "search.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert run_main(script.main, cmd[2:]) == 2
    assert "already holds" in capsys.readouterr().err
    assert run_main(script.main, [*cmd[2:-1], str(tmp_path / "low"), "--flops-ratio", "0.01"]) == 2
    assert "unreachable" in capsys.readouterr().err


def test_run_baseline_synflow_in_process(tmp_path, teacher_run):
    from tas.baselines import run_baseline

    out = tmp_path / "synflow"
    result = run_baseline({"method": "synflow", "teacher": str(teacher_run), "dataset": "digits", "limit": 64,
                           "flops_ratio": 0.6, "device": "cpu", "output": str(out), "synflow_rounds": 5})
    assert result["method"] == "synflow" and result["flops_ratio"] <= 0.6
    arch = Arch.from_json(out / "arch.json")
    assert arch.meta["rounds"] == 5
    # the saved network is the teacher pruned to the arch: its costs, and the teacher's function with
    # the pruned channels zeroed (an independent computation of the same network)
    slim = tas.load_slim(out)
    assert count_flops(slim, arch.input_size) == arch.flops and count_params(slim) == arch.params
    teacher, _ = load_run(teacher_run)
    x = torch.randn(4, *arch.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = zeroing_oracle(teacher, arch)(x)
        assert (slim(x) - expected).abs().max() <= 1e-4 * expected.abs().max()


# ---- fixed depths (a searched architecture's depths, widths scaled uniformly) -----------------
def test_width_baselines_at_given_depths_are_the_largest_uniform_point_there(model, supernet, no_data):
    depths = {"layer1": 1, "layer2": 2, "layer3": 3}
    ratio = 0.25
    arch = _arch("l1", model, ratio, depths=depths)
    full = _arch("l1", model, ratio)
    assert arch.depths == depths and arch.meta["fixed_depths"] == depths
    assert arch.flops <= ratio * arch.full_flops
    # fewer blocks leave more of the budget to the widths than at full depth
    assert arch.meta["uniform_ratio"] > full.meta["uniform_ratio"]
    slim = tas.materialize(model, arch)
    assert count_flops(slim, SIZE) == arch.flops
    # no point of a fine grid of uniform scales at these depths that fits the budget is bigger
    fitting = []
    for s in np.linspace(0.002, 1.0, 1000):
        widths = {n: min(g.widths, key=lambda c: abs(c - s * g.channels)) for n, g in supernet.groups().items()}
        cost = supernet.cost.exact("flops", widths, depths)
        if cost <= ratio * arch.full_flops:
            fitting.append(cost)
    assert max(fitting) <= arch.flops
    # the widths depend on the depths only: uniform (prefix channels) picks the same ones
    assert _arch("uniform", model, ratio, depths=depths).widths == arch.widths
    # below the width-only minimum at full depth, reachable with fewer blocks
    low = width_only_minimum(supernet, "flops") - 0.01
    assert _arch("uniform", model, low, depths={n: 1 for n in depths}).flops <= low * arch.full_flops
    with pytest.raises(TasError, match="no fixed depths"):
        _arch("synflow", model, ratio, depths=depths)
    with pytest.raises(TasError, match="outside the space"):
        _arch("l1", model, ratio, depths={**depths, "layer1": 4})
    with pytest.raises(TasError, match="every stage"):
        _arch("l1", model, ratio, depths={"layer1": 1})


def test_run_baseline_takes_the_depths_of_an_arch_json(tmp_path, teacher_run):
    from tas.baselines import run_baseline

    teacher, config = load_run(teacher_run)
    searched = create_baseline_arch("uniform-depth", teacher, 0.3, input_size=config["input_size"],
                                    model_name=config["model"])
    searched.to_json(tmp_path / "searched.json")
    result = run_baseline({"method": "l1", "teacher": str(teacher_run), "dataset": "digits", "limit": 64,
                           "flops_ratio": 0.3, "device": "cpu", "output": str(tmp_path / "l1"),
                           "depths": str(tmp_path / "searched.json")})
    arch = result["arch"]
    assert arch.depths == searched.depths and arch.method == "l1" and arch.flops_ratio <= 0.3
    assert arch.meta["fixed_depths"] == searched.depths
    assert any(g["indices"] != list(range(g["width"])) for g in arch.groups.values())  # L1's channels, not a prefix
