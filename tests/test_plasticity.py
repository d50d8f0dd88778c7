"""The plasticity baseline (GraNet, structured): the cubic schedule by hand, the masks against the
zeroing oracle, a regeneration step against an independent gradient computation, the final
architecture's budget, and search.py --method plasticity through train.py's distillation."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import zeroing_oracle, trained_like_resnet20
from torch.utils.data import DataLoader, TensorDataset

import tas
from tas.prune.arch import Arch
from tas.baselines import create_baseline_arch, max_step_cost
from tas.baselines.plasticity import (ChannelGates, cubic_sparsity, filter_magnitudes, regenerate,
                                      regeneration_rate, revival_gradients, update_steps)
from tas.errors import TasError
from tas.prune.flops import count_flops, count_params
from tas.nas.supernet import create_supernet

SIZE = (1, 16, 16)


_model = trained_like_resnet20


@pytest.fixture(scope="module")
def model():
    return _model()


def _loader(n: int = 32, batch: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, *SIZE, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch, shuffle=False)


# ---- the schedules ---------------------------------------------------------------------------
def test_cubic_schedule_and_regeneration_rate_by_hand():
    # s_f = 0.5 from s_i = 0 over t in [0, 8]: 0.5 * (1 - (1 - t/8)^3)
    assert [cubic_sparsity(t, 0.5, 8) for t in (0, 2, 4, 6, 8, 11)] == pytest.approx(
        [0.0, 0.2890625, 0.4375, 0.4921875, 0.5, 0.5], abs=1e-12)
    # starting at t0 = 2 from s_i = 0.1: 0.5 + (0.1 - 0.5) * (1 - 2/6)^3 = 0.5 - 0.4 * 8/27 at t = 4
    assert cubic_sparsity(1, 0.5, 8, start=2, initial=0.1) == pytest.approx(0.1)
    assert cubic_sparsity(4, 0.5, 8, start=2, initial=0.1) == pytest.approx(0.5 - 3.2 / 27)
    # cosine-annealed regeneration: r0 at 0, r0/2 half way, 0 at the end
    assert [regeneration_rate(t, 10, 0.5) for t in (0, 5, 10)] == pytest.approx([0.5, 0.25, 0.0], abs=1e-12)
    assert update_steps(40, 10, 0.75) == (3, 30)  # floor(0.75 * 40 / 10) = 3 steps apart, s_f at 30
    assert update_steps(5, 10, 0.75) == (1, 10)   # shorter than the schedule: every step, s_f after the run


# ---- masks and regeneration ------------------------------------------------------------------
def _keep(channels: int, alive: list[int]) -> torch.Tensor:
    k = torch.zeros(channels, dtype=torch.bool)
    k[alive] = True
    return k


def test_gates_compute_the_zeroing_oracle(model):
    supernet = create_supernet(model, input_size=SIZE, model_name="cifar_resnet20")
    arch = supernet.random_arch(torch.Generator().manual_seed(3))
    arch = supernet.make_arch(arch.widths, {n: s.num_blocks for n, s in supernet.graph.stages.items()},
                              indices={n: torch.randperm(g.channels, generator=torch.Generator().manual_seed(1))
                                       [: arch.widths[n]].tolist() for n, g in supernet.graph.groups.items()})
    net = copy.deepcopy(model)
    gates = ChannelGates(net, supernet.graph)
    gates.set({n: _keep(g["channels"], g["indices"]) for n, g in arch.groups.items()})
    x = torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = zeroing_oracle(model, arch)(x)
        assert torch.allclose(net(x), expected, atol=1e-5)
        with gates.opened():
            assert torch.allclose(net(x), model(x), atol=1e-5)
    gates.remove()
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)


def _independent_scores(model: nn.Module, convs: list[str], x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel of ``convs`` (one group's producers, named by hand): mean |w| over their
    filters, and Σ|∂L/∂W| of the plain dense network (no gates) in train mode."""
    net = copy.deepcopy(model).train()
    F.cross_entropy(net(x), y).backward()
    mods = [net.get_submodule(c) for c in convs]
    mag = sum(m.weight.detach().abs().flatten(1).sum(1) for m in mods) / sum(m.weight[0].numel() for m in mods)
    grad = sum(m.weight.grad.abs().flatten(1).sum(1) for m in mods)
    return mag.double(), grad.double()


@pytest.mark.parametrize("group,convs", [
    ("layer3.0.conv1", ["layer3.0.conv1"]),
    ("layer2", ["layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"]),
])
def test_regeneration_revives_the_zeroed_filters_of_largest_gradient(model, group, convs):
    supernet = create_supernet(model, input_size=SIZE, model_name="cifar_resnet20")
    graph = supernet.graph
    channels = graph.groups[group].channels
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(8, *SIZE, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    net = copy.deepcopy(model).train()
    gates = ChannelGates(net, graph)
    keep = _keep(channels, torch.randperm(channels, generator=gen)[: channels // 2].tolist())
    gates.set({group: keep})
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    grads = revival_gradients(net, graph, gates, x, y)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in buffers.items())  # BN statistics untouched
    mags = filter_magnitudes(net, graph)
    rate = 0.3
    new = regenerate(keep, mags[group], grads[group], rate)

    # independent: the plain network's gradients, then GraNet's rule on this group by hand
    mag, grad = _independent_scores(model, convs, x, y)
    assert torch.allclose(mags[group], mag) and torch.allclose(grads[group], grad, rtol=1e-4)
    m = math.ceil(rate * int(keep.sum()))
    alive = sorted(keep.nonzero().flatten().tolist(), key=lambda c: (mag[c].item(), -c))
    dropped = alive[:m]
    zeroed = [c for c in range(channels) if not keep[c]] + dropped
    revived = sorted(zeroed, key=lambda c: (-grad[c].item(), c))[:m]
    expected = _keep(channels, alive[m:] + revived)
    assert torch.equal(new, expected)
    assert int(new.sum()) == int(keep.sum())            # the width (and so the cost) is unchanged
    assert (new & ~keep).any()                          # the case revives channels zeroed before


def test_regenerate_grouped_conv_moves_the_same_local_positions():
    keep = _keep(8, [0, 1, 4, 5])  # 2 conv groups of 4: local positions 0, 1 alive
    mag = torch.tensor([1.0, 5.0, 9.0, 9.0, 1.0, 5.0, 9.0, 9.0])
    grad = torch.tensor([0.0, 0.0, 1.0, 3.0, 0.0, 0.0, 1.0, 3.0])
    # ceil(0.5 * 2 live) = 1: local 0 (lowest magnitude) dropped, local 3 (largest gradient) revived
    assert regenerate(keep, mag, grad, 0.5, conv_groups=2).nonzero().flatten().tolist() == [1, 3, 5, 7]


# ---- the architecture ------------------------------------------------------------------------
def test_plasticity_meets_its_flops_target_within_rounding(model):
    supernet = create_supernet(model, input_size=SIZE, model_name="cifar_resnet20")
    step = max_step_cost(supernet, "flops")
    for ratio, epochs, batch in ((0.5, 2, 16), (0.3, 1, 32)):  # the second is shorter than its schedule
        arch = create_baseline_arch("plasticity", model, ratio, input_size=SIZE, model_name="cifar_resnet20",
                                    train_loader=_loader(batch=batch), epochs=epochs, prune_steps=3)
        target = ratio * arch.full_flops
        assert arch.method == "plasticity" and target - step <= arch.flops <= target
        slim = tas.materialize(model, arch)  # counted on the slim network, not by the cost model
        assert count_flops(slim, SIZE) == arch.flops and count_params(slim) == arch.params
        for n, g in supernet.groups().items():
            assert arch.groups[n]["width"] in g.widths and len(arch.groups[n]["indices"]) == arch.groups[n]["width"]
        assert arch.depths == {n: s.num_blocks for n, s in supernet.graph.stages.items()}
        # each update pruned to the cubic schedule's sparsity at its step, never above its cost
        end, s_f = arch.meta["schedule_end"], 1 - ratio
        assert [u["final"] for u in arch.meta["updates"]][-1] == (arch.meta["steps"] < end)  # a short run
        for u in arch.meta["updates"]:
            s = s_f if u["final"] else s_f * (1 - (1 - min(u["step"] / end, 1)) ** 3)
            assert u["sparsity"] == pytest.approx(s, abs=1e-6) and u["ratio"] <= 1 - s + 1e-9
    assert arch.meta["steps"] == 1 and arch.meta["updates"][-1]["sparsity"] == pytest.approx(0.7)
    with pytest.raises(TasError, match="needs training data"):
        create_baseline_arch("plasticity", model, 0.5, input_size=SIZE, model_name="cifar_resnet20")


# ---- search.py --method plasticity, then train.py distils it ---------------------------------
def test_search_py_plasticity_then_distil(tmp_path, teacher_run, search_script, train_script):
    out = tmp_path / "plasticity"
    assert search_script.main(["--method", "plasticity", "--teacher", str(teacher_run), "--dataset", "digits",
                               "--limit", "64", "--batch-size", "16", "--epochs", "2", "--flops-ratio", "0.5",
                               "--device", "cpu", "--no-progress", "--output", str(out)]) == 0
    arch = Arch.from_json(out / "arch.json")
    assert arch.method == "plasticity" and arch.flops_ratio <= 0.5 and arch.meta["epochs"] == 2
    assert arch.meta["steps"] == 8 and arch.meta["updates"][-1]["sparsity"] == pytest.approx(0.5)
    config = json.loads((out / "config.json").read_text())
    assert config["search"]["method"] == "plasticity" and config["search"]["epochs"] == 2
    slim_dir = tmp_path / "slim"
    assert train_script.main(["--arch", str(out / "arch.json"), "--teacher", str(teacher_run), "--dataset", "digits",
                              "--img-size", "16", "--limit", "64", "--batch-size", "32", "--epochs", "1",
                              "--no-progress", "--device", "cpu", "--output", str(slim_dir)]) == 0
    slim = tas.load_slim(slim_dir)
    assert count_flops(slim, arch.input_size) == arch.flops
    assert json.loads((slim_dir / "metrics.json").read_text())["top1"] >= 0
