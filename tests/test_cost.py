"""The TAS cost loss: which branch applies where, its values and the sign of its gradient."""
import math

import pytest
import torch

from tas.nas.cost import cost_loss

TARGET, TOL = 500.0, 0.1  # the band is [450, 500]: 10 % of the target


def _loss_and_grad(expected: float, current: float) -> tuple[torch.Tensor, float | None]:
    e = torch.tensor(expected, dtype=torch.float64, requires_grad=True)
    lc = cost_loss(e, current, TARGET, TOL)
    grad = torch.autograd.grad(lc, e)[0].item() if lc.requires_grad else None
    return lc, grad


@pytest.mark.parametrize("current", [500.5, 501.0, 900.0])
def test_too_big_shrinks_with_plus_log_expected(current):
    """Argmax over the target: +log E, whose gradient 1/E > 0 makes a descent step lower E."""
    lc, grad = _loss_and_grad(400.0, current)  # E itself does not pick the branch, the argmax does
    assert lc.item() == pytest.approx(math.log(400.0), rel=1e-12)
    assert grad == pytest.approx(1 / 400.0, rel=1e-12) and grad > 0


@pytest.mark.parametrize("current", [100.0, 449.0, 449.99])
def test_too_small_grows_with_minus_log_expected(current):
    """Argmax under the band: -log E, whose gradient -1/E < 0 makes a descent step raise E."""
    lc, grad = _loss_and_grad(700.0, current)
    assert lc.item() == pytest.approx(-math.log(700.0), rel=1e-12)
    assert grad == pytest.approx(-1 / 700.0, rel=1e-12) and grad < 0


@pytest.mark.parametrize("current", [450.0, 475.0, 500.0])
def test_inside_the_band_is_zero_and_pulls_nowhere(current):
    """In [target·(1 - tolerance), target] (both ends included) the loss is 0 and carries no gradient."""
    lc, grad = _loss_and_grad(480.0, current)
    assert lc.item() == 0.0 and lc.shape == ()
    assert grad is None or grad == 0.0


def test_descent_on_the_loss_moves_expected_cost_toward_the_band():
    """A few gradient steps on log-parametrised E: down while too big, up while too small."""
    for current, start, direction in ((800.0, 600.0, -1), (200.0, 300.0, +1)):
        log_e = torch.tensor(math.log(start), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([log_e], lr=0.1)
        for _ in range(5):
            opt.zero_grad()
            cost_loss(log_e.exp(), current, TARGET, TOL).backward()
            opt.step()
        # d(±log E)/d(log E) = ±1, so 5 steps of lr 0.1 move log E by exactly ∓0.5
        assert log_e.item() == pytest.approx(math.log(start) + direction * 0.5, rel=1e-12)
