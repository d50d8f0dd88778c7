"""Gumbel sampling, temperature schedule and channel-wise interpolation against their formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from tas.nas.interp import channel_interp, interp_matrix
from tas.nas.sampling import gumbel_topk, perturbed_logits, sample_without_replacement, tau_at


def test_gumbel_max_frequencies_match_softmax():
    # Gumbel-max trick: argmax of (log_softmax(a) + g) / tau is distributed as softmax(a), for any tau.
    torch.manual_seed(0)
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0])
    n = 20000
    z = torch.stack([perturbed_logits(logits, 2.0) for _ in range(n)])
    freq = torch.bincount(z.argmax(1), minlength=4).float() / n
    p = torch.softmax(logits, 0)
    assert torch.all((freq - p).abs() < 4 * torch.sqrt(p * (1 - p) / n))


def test_without_replacement_inclusion_probabilities():
    torch.manual_seed(1)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20000
    counts = torch.zeros(4)
    for _ in range(n):
        idx = sample_without_replacement(p, 2)
        assert idx.unique().numel() == 2
        counts[idx] += 1
    # P(i in S) = p_i + sum_{j != i} p_j * p_i / (1 - p_j)
    analytic = torch.tensor([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)])
    freq = counts / n
    assert torch.all((freq - analytic).abs() < 4 * torch.sqrt(analytic * (1 - analytic) / n))


def _gumbel(n: int, seed: int) -> torch.Tensor:
    """The Gumbel draws a generator seeded ``seed`` gives first: -log of Exp(1) samples, in float64."""
    e = torch.empty(n).exponential_(generator=torch.Generator().manual_seed(seed))
    return -torch.log(e.double())


@pytest.mark.parametrize("tau,k", [(1.0, 2), (0.5, 3), (5.0, 2)])
def test_gumbel_topk_weights_are_softmax_over_chosen_perturbed_logits(tau, k):
    """Fragment weights: softmax of (log_softmax(α) + g) / τ restricted to the chosen candidates."""
    alpha = [0.3, -1.2, 0.8, 0.0, -0.4]
    logits = torch.tensor(alpha, requires_grad=True)
    idx, w = gumbel_topk(logits, tau=tau, k=k, generator=torch.Generator().manual_seed(7))
    assert idx.numel() == k and idx.unique().numel() == k
    # independent: the same noise redrawn from the same seed, the formula written out in float64
    g = _gumbel(len(alpha), 7)
    log_p = [a - math.log(sum(math.exp(b) for b in alpha)) for a in alpha]
    z = [(log_p[i] + g[i].item()) / tau for i in range(len(alpha))]
    chosen = idx.tolist()
    norm = sum(math.exp(z[i]) for i in chosen)
    expected = [math.exp(z[i]) / norm for i in chosen]
    assert w.tolist() == pytest.approx(expected, rel=1e-5)
    # d w_a / d α_m = (w_a / τ)(δ_am − w_m) for a chosen m, 0 otherwise (log_softmax's shift cancels)
    for a in range(k):
        (grad,) = torch.autograd.grad(w[a], logits, retain_graph=True)
        hand = torch.zeros(len(alpha), dtype=torch.float64)
        for pos, m in enumerate(chosen):
            hand[m] = expected[a] / tau * ((a == pos) - expected[pos])
        assert torch.allclose(grad.double(), hand, atol=1e-6), (a, grad, hand)


def test_tau_schedules():
    assert tau_at(0.0) == pytest.approx(5.0) and tau_at(1.0) == pytest.approx(0.1)
    assert tau_at(0.5) == pytest.approx(0.1 + 4.9 / 2)
    assert tau_at(0.5, 10, 0.1, "linear") == pytest.approx(5.05)
    with pytest.raises(ValueError):
        tau_at(0.5, schedule="step")


@pytest.mark.parametrize("c_in,c_out", [(5, 2), (5, 3), (4, 8), (7, 7), (3, 10), (16, 12), (5, 8), (24, 32), (40, 64)])
def test_cwi_matches_adaptive_avg_pool3d(c_in, c_out):
    x = torch.randn(2, c_in, 3, 4)
    ref = F.adaptive_avg_pool3d(x.unsqueeze(1), (c_out, 3, 4)).squeeze(1)
    assert torch.allclose(channel_interp(x, c_out), ref, atol=1e-6)


def test_cwi_formula_ranges():
    # output channel t averages input channels [floor(t*C/Co), ceil((t+1)*C/Co))
    m = interp_matrix(5, 3)
    for t in range(3):
        lo, hi = (t * 5) // 3, math.ceil((t + 1) * 5 / 3)
        expected = torch.zeros(5)
        expected[lo:hi] = 1 / (hi - lo)
        assert torch.allclose(m[t], expected)


def test_interp_matrix_is_built_once_per_device_and_dtype():
    # a search calls it for every fragment of every step: on a GPU, a host matrix copied over at each
    # call would stall the step, so the device copy is what is kept
    m = interp_matrix(7, 4, "meta")
    assert m.device.type == "meta" and interp_matrix(7, 4, torch.device("meta")) is m
    assert interp_matrix(7, 4, "meta", torch.float64) is not m
    assert interp_matrix(7, 4) is interp_matrix(7, 4, "cpu")


def test_interp_matrix_first_built_under_inference_mode_still_trains():
    with torch.inference_mode():
        channel_interp(torch.randn(1, 11, 2, 2), 6)  # the (11, 6) matrix is built and cached here
    x = torch.randn(2, 11, 3, 3, requires_grad=True)
    channel_interp(x, 6).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
