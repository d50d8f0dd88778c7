"""The architecture step's options: its Gumbel draws per step (--arch-draws) and the weight of its val loss
(--arch-ce-weight)."""
import json

import pytest
import timm
import torch

import tas  # noqa: F401  (registers cifar_resnet*)
from tas.errors import TasError
from tas.nas.arch_step import ArchStepper
from tas.nas.config import SearchConfig
from test_arch_schedule import _searcher
from test_search import FLAGS


def _supernet():
    return tas.create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 16, 16))


def test_arch_draws_give_every_chunk_its_own_gumbel_draw():
    net = _supernet()
    net.generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 3, 16, 16), torch.randint(0, 10, (10,))
    seen = []

    def loss_fn(model, images, targets):
        out = model(images)
        loss = torch.nn.functional.cross_entropy(out, targets)
        draw = [float(f[3].detach()) for g in net.groups().values() if g.alpha is not None for f in g.fragments]
        seen.append((len(targets), float(loss.detach()), draw))
        return loss, out

    stepper = ArchStepper(net, "flops", 0.5, 0.1, 2.0, 0.1, 0.0, loss_fn=loss_fn, draws=4)
    loss = stepper.val_loss(x, y)
    assert [n for n, _, _ in seen] == [3, 3, 3, 1]
    # a new Gumbel draw per chunk: no two chunks ran through the same fragment weights
    draws = [d for _, _, d in seen]
    assert all(a != b for i, a in enumerate(draws) for b in draws[i + 1:])
    # the chunks' mean losses weighted by their sizes: the batch's mean per-sample loss
    assert float(loss.detach()) == pytest.approx(sum(n * v for n, v, _ in seen) / 10, rel=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in net.arch_parameters())


def test_arch_draws_are_checked():
    with pytest.raises(TasError, match="--arch-draws"):
        SearchConfig(flops_ratio=0.5, arch_draws=0).validate()
    with pytest.raises(TasError, match="--arch-draws"):
        SearchConfig(flops_ratio=0.5, arch_draws=65, batch_size=64).validate()


def _stepped(ce_weight: float, batch_seed: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = _supernet()
    net.generator = torch.Generator().manual_seed(0)
    stepper = ArchStepper(net, "flops", 0.3, 0.1, 2.0, 0.1, 0.0, ce_weight=ce_weight, entropy_weight=3.0)
    stepper.progress = 0.5
    g = torch.Generator().manual_seed(batch_seed)
    stepper.step(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
    return [p.detach().clone() for p in net.arch_parameters()]


def test_arch_ce_weight_zero_leaves_the_step_to_the_budget_and_entropy_terms():
    # without the val loss the step does not depend on the batch; with it, it does
    assert all(torch.equal(a, b) for a, b in zip(_stepped(0.0, 1), _stepped(0.0, 2)))
    assert not all(torch.equal(a, b) for a, b in zip(_stepped(1.0, 1), _stepped(1.0, 2)))
    with pytest.raises(TasError, match="--arch-ce-weight"):
        SearchConfig(flops_ratio=0.5, arch_ce_weight=-1.0).validate()


def test_the_searcher_builds_its_step_with_the_options():
    s = _searcher(arch_draws=2, arch_ce_weight=0.0)
    assert (s.stepper.draws, s.stepper.ce_weight) == (2, 0.0)


def test_options_reach_the_search_from_the_cli(tmp_path, search_script, teacher_run):
    out = tmp_path / "run"
    assert search_script.main(FLAGS + ["--teacher", str(teacher_run), "--flops-ratio", "0.5", "--epochs", "1",
                                       "--arch-draws", "2", "--arch-ce-weight", "0", "--output", str(out)]) == 0
    search = json.loads((out / "config.json").read_text())["search"]
    assert (search["arch_draws"], search["arch_ce_weight"]) == (2, 0.0)
