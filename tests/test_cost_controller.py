"""The budget controller: dual ascent brings the search's own argmax into the band, from either side."""
import json
import math

import numpy as np
import pytest
import timm
import torch

import tas  # noqa: F401  (registers cifar_resnet*)
from tas.prune.arch import Arch
from tas.nas.arch_step import ArchStepper
from tas.nas.cost import LagrangianCost

from test_search import FLAGS


def test_multipliers_ascend_on_the_violation():
    c = LagrangianCost(aim=0.45, lr=2.0, constraints=2, penalty=3.0)
    ratios = torch.tensor([0.65, 0.30], dtype=torch.float64, requires_grad=True)
    assert c.loss(ratios).item() == pytest.approx(3.0 * 0.2 ** 2 + 3.0 * 0.15 ** 2)
    c.ascend(ratios.detach())
    assert c.lambdas.reshape(-1).tolist() == pytest.approx([2.0 * 0.2, 3.0 + 2.0 * 0.04, -2.0 * 0.15, 3.0 + 2.0 * 0.0225])
    loss = c.loss(ratios)
    loss.backward()
    # d/ds (λ1 e + λ2 e²) = λ1 + 2 λ2 e
    assert ratios.grad.tolist() == pytest.approx([0.4 + 2 * 3.08 * 0.2, -0.3 + 2 * 3.045 * -0.15])
    state = c.state_dict()
    other = LagrangianCost(aim=0.45, lr=2.0, constraints=2)
    other.load_state_dict(state)
    assert torch.equal(other.lambdas, c.lambdas)


def _toy(start: str) -> ArchStepper:
    torch.manual_seed(0)
    s = tas.create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 8, 8))
    with torch.no_grad():  # start far from the target: every group at its widest, or at its narrowest
        for p in s.arch_parameters():
            p.zero_()
            p[-1 if start == "above" else 0] = 2.0
    return ArchStepper(s, "flops", 0.5, 0.1, 2.0, 0.05, 1e-3)


@pytest.mark.parametrize("start", ["above", "below"])
def test_controller_brings_expected_and_argmax_cost_into_the_band(start):
    stepper = _toy(start)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    first = stepper.expected_cost().item() / stepper.full
    assert (first > 0.6) if start == "above" else (first < 0.3)
    aim = 0.475  # the band's middle
    trace = [stepper.step(x, y) for _ in range(60)]
    shown = [f"{t['expected_ratio']:.2f}/{t['derived_ratio']:.2f}" for t in trace]
    end = trace[-1]
    # no decode involved: the expectation and the argmax themselves come to the target
    assert abs(end["expected_ratio"] - aim) < 0.15 * abs(first - aim), shown
    assert abs(end["derived_ratio"] - aim) < 0.1, shown
    # and stay there: no switching between the band's sides over the last steps
    assert max(t["derived_ratio"] for t in trace[-10:]) - min(t["derived_ratio"] for t in trace[-10:]) < 0.1, shown


def test_the_band_is_a_fraction_of_the_target():
    """At a low target the band narrows with it: an argmax 20 % under the target is outside a 10 %
    band (the decode moves it up into [0.9·target, target]) though it is within 0.05 of the full
    network's cost (TAS's absolute band would have kept it), and inside a 25 % band (0 moves)."""
    torch.manual_seed(0)
    s = tas.create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 8, 8))
    with torch.no_grad():  # every group at its narrowest, every stage at its deepest
        for p in s.arch_parameters():
            p.zero_()
            p[0] = 2.0
        for b in s.betas.values():
            b.zero_()
            b[-1] = 2.0
    full = s.full["flops"]
    argmax = s.cost.exact("flops", *s.argmax()) / full
    target = argmax / 0.8
    assert target - argmax < 0.05 and argmax < 0.2  # inside the paper's absolute band
    narrow = ArchStepper(s, "flops", target, 0.1, 2.0, 0.05, 1e-3)
    assert not narrow.within()
    widths, depths, moves = narrow.decode()
    kept = s.cost.exact("flops", widths, depths) / full
    assert moves > 0 and 0.9 * target <= kept <= target
    wide = ArchStepper(s, "flops", target, 0.25, 2.0, 0.05, 1e-3)
    assert wide.within() and wide.decode()[2] == 0


@pytest.mark.parametrize("start", ["above"])
def test_tas_loss_is_still_available(start):
    torch.manual_seed(0)
    stepper = _toy(start)
    tas_stepper = ArchStepper(stepper.supernet, "flops", 0.5, 0.1, 2.0, 0.05, 1e-3, cost_loss="tas")
    assert tas_stepper.controller is None
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    t = tas_stepper.step(x, y)
    # above the target the TAS term is log E[FLOPs] (weighted by cost_weight in the loss)
    assert t["arch_loss"] == pytest.approx(t["arch_ce"] + 2.0 * t["cost_loss"], rel=1e-5)
    assert t["cost_loss"] == pytest.approx(torch.log(torch.tensor(t["expected_ratio"] * tas_stepper.full)).item(),
                                           rel=1e-4)


def test_no_decode_from_the_cli_keeps_the_search_argmax(tmp_path, search_script, teacher_run):
    # --arch-lr 0: the argmax stays at the logits' random start (0.27 of the FLOPs), far below 0.8
    base = FLAGS + ["--teacher", str(teacher_run), "--flops-ratio", "0.8", "--arch-lr", "0", "--epochs", "1"]
    assert search_script.main(base + ["--output", str(tmp_path / "d")]) == 0
    assert search_script.main(base + ["--no-decode", "--output", str(tmp_path / "n")]) == 0
    decoded, kept = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("d", "n"))
    assert decoded["pre_decode_ratio"] == kept["pre_decode_ratio"] < 0.7
    assert decoded["decode_moves"] > 0 and decoded["within_tolerance"]
    assert kept["decode_moves"] == 0 and not kept["within_tolerance"]
    arch = Arch.from_json(tmp_path / "n" / "arch.json")
    assert arch.flops_ratio == pytest.approx(kept["pre_decode_ratio"])
    assert arch.meta["decode"] is False and arch.meta["channel_order"] == "l1"


def _stepper(lr: float = 0.05, **kw) -> ArchStepper:
    torch.manual_seed(0)
    s = tas.create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 8, 8))
    return ArchStepper(s, "flops", 0.5, 0.1, 2.0, lr, 0.0, **kw)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.mark.parametrize("hold, progress, factor", [(0.0, 0.0, 1.0), (0.0, 0.5, 0.5), (0.0, 1.0, 0.0),
                                                   (0.5, 0.4, 1.0), (0.5, 0.75, 0.5), (0.5, 1.0, 0.0)])
def test_cosine_arch_lr_scales_the_step(hold, progress, factor):
    """Adam's first step moves every logit with a gradient by exactly its learning rate, so the
    largest move is the scheduled rate: 0.05 until ``hold``, then 0.05 · ½(1 + cos πq) over the rest."""
    stepper = _stepper(lr_schedule="cosine", lr_hold=hold)
    before = [p.detach().clone() for p in stepper.params]
    stepper.progress = progress
    terms = stepper.step(*_batch())
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(stepper.params, before))
    assert moved == pytest.approx(0.05 * factor, rel=1e-3, abs=1e-9)
    assert terms["arch_lr"] == pytest.approx(0.05 * factor, abs=1e-12)


def test_mean_entropy_is_the_normalised_entropy_of_every_distribution():
    stepper = _stepper()
    logits = list(stepper.params)
    with torch.no_grad():
        for p in logits:
            p.zero_()
    assert stepper.mean_entropy().item() == pytest.approx(1.0)  # equal logits: uniform
    with torch.no_grad():
        logits[0][0] = 3.0  # one distribution away from uniform, computed here independently
    p = np.exp(logits[0].detach().double().numpy())
    p /= p.sum()
    h = -(p * np.log(p)).sum() / np.log(len(p))
    assert stepper.mean_entropy().item() == pytest.approx((h + len(logits) - 1) / len(logits), rel=1e-5)


def test_entropy_weight_commits_the_distributions():
    x, y = _batch()
    ends = {}
    for weight in (0.0, 5.0):
        stepper = _stepper(lr=0.3, entropy_weight=weight)
        stepper.progress = 1.0  # the ramp's full weight
        for _ in range(20):
            stepper.step(x, y)
        ends[weight] = stepper.mean_entropy().item()
    assert ends[5.0] < ends[0.0] - 0.05, ends


def test_search_logs_the_scheduled_arch_lr(tmp_path, search_script, teacher_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "s"
    assert search_script.main(FLAGS + ["--teacher", str(teacher_run), "--output", str(out), "--log-every", "1",
                                       "--epochs", "1", "--arch-lr", "0.1", "--arch-lr-schedule", "cosine",
                                       "--arch-lr-hold", "0.25", "--landing-steps", "0"]) == 0
    acc = EventAccumulator(str(out), size_guidance={"scalars": 0})
    acc.Reload()
    lrs = [e.value for e in acc.Scalars("search/arch_lr")]
    n = len(lrs)
    assert n > 2
    q = [max(0.0, i / (n - 1) - 0.25) / 0.75 for i in range(n)]
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * v)) for v in q], abs=1e-7)


def test_argmax_valued_constraint_carries_the_sharpened_gradient():
    """``sharp_value="argmax"``: the second constraint's value is the argmax architecture's exact
    ratio (what the multipliers ascend on), its gradient the sharpened expectation's, scaled by
    ``λ1 + 2·λ2·e`` with ``e`` the argmax's error; computed here from the parts."""
    stepper = _stepper(sharp_value="argmax")
    s = stepper.supernet
    widths, depths = s.argmax()
    argmax_ratio = s.make_arch(widths, depths).flops_ratio  # through an Arch, not the stepper's cost call
    lam = stepper.controller.lambdas.clone()
    aim = stepper.controller.aim
    lc = stepper._cost_loss()[0]
    assert stepper._ratios[1].item() == pytest.approx(argmax_ratio, rel=1e-6)
    got = torch.autograd.grad(lc, stepper.params, allow_unused=True)
    # independently: the plain expectation's term plus the sharpened one's, weighted by the argmax error
    e1 = s.expected_cost("flops") / s.full["flops"] - aim
    with s.sharpened(stepper.sharp_temperature):
        sharp = s.expected_cost("flops") / s.full["flops"]
    e2 = argmax_ratio - aim
    ref = (lam[0, 0] * e1 + lam[0, 1] * e1 * e1 + (lam[1, 0] + 2 * lam[1, 1] * e2) * sharp).float()
    want = torch.autograd.grad(ref, stepper.params, allow_unused=True)
    for g, w in zip(got, want):
        if w is None:
            assert g is None or not g.any()
        else:
            assert torch.allclose(g, w, rtol=1e-4, atol=1e-7)
    stepper.controller.ascend(stepper._ratios.detach())
    assert stepper.controller.lambdas[1, 0].item() == pytest.approx(lam[1, 0].item() + stepper.controller.lr * e2)


def test_an_unknown_sharp_value_is_one_error_line():
    from tas.errors import TasError
    from tas.nas.config import SearchConfig

    with pytest.raises(TasError, match=r"^sharp_value must be one of sharpened, argmax, got 'exact'$"):
        SearchConfig(flops_ratio=0.5, sharp_value="exact").validate()


def test_landing_steps_stop_once_the_argmax_is_in_the_band():
    """From every group at its widest (argmax far over the band) the landing steps move it with the
    data and the controller alone, and stop at the first step that finds it inside; an argmax in
    the band takes none. The learning rate is the one given, not the schedule's 0 at the search's end."""
    x, y = _batch()
    stepper = _toy("above")
    stepper.lr_schedule, stepper.lr_hold = "cosine", 0.5
    assert not stepper.within()
    taken = stepper.land(iter([(x, y)] * 200), max_steps=200, lr=0.05)
    assert stepper.within()
    assert 0 < len(taken) < 200 and stepper.progress == 1.0
    low, high = 0.45, 0.5  # the band: each step was taken from an argmax outside it
    assert all(not low <= t["derived_ratio"] <= high for t in taken), [t["derived_ratio"] for t in taken]
    assert all(t["arch_lr"] == 0.05 for t in taken)
    assert stepper.land(iter([(x, y)] * 5), max_steps=5, lr=0.05) == []


def test_landing_steps_are_bounded():
    x, y = _batch()
    stepper = _toy("above")
    assert len(stepper.land(iter([(x, y)] * 10), max_steps=3, lr=0.05)) == 3
    assert not stepper.within()


def test_landing_steps_from_the_cli_are_counted_and_logged(tmp_path, search_script, teacher_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # --arch-lr 0: the argmax cannot leave its start (0.27 of the FLOPs, under the band of 0.8), so
    # the landing takes its whole allowance: half of the search's 8 architecture steps
    base = FLAGS + ["--teacher", str(teacher_run), "--flops-ratio", "0.8", "--arch-lr", "0", "--epochs", "1",
                    "--log-every", "1"]
    assert search_script.main(base + ["--landing-steps", "0.5", "--output", str(tmp_path / "l")]) == 0
    m = json.loads((tmp_path / "l" / "metrics.json").read_text())
    assert m["steps"] == 8 and m["landing_steps"] == 4 and m["pre_decode_ratio"] < 0.7
    assert Arch.from_json(tmp_path / "l" / "arch.json").meta["landing_steps"] == 4
    acc = EventAccumulator(str(tmp_path / "l"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("search/derived_ratio")] == list(range(1, 13))
    assert [e.value for e in acc.Scalars("search/arch_lr")][-4:] == [0.0] * 4
    assert search_script.main(base + ["--landing-steps", "0", "--output", str(tmp_path / "n")]) == 0
    assert json.loads((tmp_path / "n" / "metrics.json").read_text())["landing_steps"] == 0
