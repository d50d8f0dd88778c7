"""The fused candidate BN (one BN + one 1×1 mixing conv) against the K-fragment forward it replaces.

Both paths run on copies of one supernet with the same Gumbel draws, in training mode: the logits,
the gradient of every parameter (conv and BN weights, α, β, SA++ attention logits) and every BN's
running statistics and batch counter must agree within 1e-5 of their scale. The supernet runs in
float64 so that what is compared is the algebra, not float32 rounding in another summation order
(in float32 the α gradients, reductions over every pixel, already differ by ~3e-5).
"""
import copy

import pytest
import timm
import torch

import tas.nas.ops as ops
from tas.nas.groups import GroupState
from tas.nas.ops import SearchBN, batch_norm_at, fusable, fused_candidate_bn, mix_fragments
from tas.nas.supernet import create_supernet
from tas.prune.graph import Group

from conftest import perturb_like_search


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / a.detach().abs().max().clamp_min(1e-12))


def _search_step(s, x: torch.Tensor, fused: bool, seed: int) -> tuple[torch.Tensor, dict, dict]:
    """Logits, gradients and buffers after one training-mode search forward + backward."""
    for m in s.modules():
        if isinstance(m, SearchBN):
            m.fused = fused
    s.generator = torch.Generator().manual_seed(seed)
    s.search().train()
    y = s(x)
    # a loss whose gradient differs per logit (a mean of logits would cancel through the BNs)
    (y.square().mean() + y[:, 0].sum()).backward()
    grads = {n: p.grad.clone() for n, p in s.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in s.named_buffers()}
    return y.detach(), grads, buffers


@pytest.mark.parametrize("selection", ["prefix", "sapp"])
def test_fused_bn_equals_fragment_mixture_forward_backward_and_stats(selection, monkeypatch):
    torch.manual_seed(0)
    base = create_supernet(timm.create_model("cifar_resnet20", num_classes=10), input_size=(3, 8, 8),
                           selection=selection).double()
    perturb_like_search(base)
    with torch.no_grad():
        for g in base.groups().values():
            if g.alpha is not None:  # candidates of distinct weights, drawn in varied pairs
                g.alpha.copy_(torch.randn(g.alpha.shape))
            if g.attn_logits is not None:  # a non-trivial SA++ scale, on canonical (prefix) channels
                g.attn_logits.copy_(0.5 * torch.randn(g.attn_logits.shape))
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    calls = []
    real = ops.fused_candidate_bn
    monkeypatch.setattr(ops, "fused_candidate_bn", lambda *a: calls.append(1) or real(*a))

    ref = _search_step(copy.deepcopy(base), x, fused=False, seed=3)
    assert not calls
    new = _search_step(copy.deepcopy(base), x, fused=True, seed=3)
    assert len(calls) >= 10  # the fused path ran (cifar_resnet20's groups are all narrow enough)

    assert _rel(ref[0], new[0]) < 1e-5
    assert ref[1].keys() == new[1].keys()
    arch_names = [n for n in ref[1] if "alpha" in n or "betas" in n or "attn_logits" in n]
    assert arch_names and any(n.endswith("bns.0.weight") for n in ref[1])
    for n in ref[1]:
        assert _rel(ref[1][n], new[1][n]) < 1e-5, n
    for n in ref[2]:
        if ref[2][n].is_floating_point():
            assert _rel(ref[2][n], new[2][n]) < 1e-5, n
        else:
            assert torch.equal(ref[2][n], new[2][n]), n
    # the step did move the statistics (else equal buffers would prove nothing)
    assert any(not torch.equal(ref[2][n], b) for n, b in base.named_buffers() if n.endswith("running_var"))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_fused_bn_one_layer_with_cumulative_momentum(momentum):
    """One group of widths 2, 3, 5 drawing candidates 1 and 2; a BN with ``momentum=None``
    (cumulative average) updates its statistics by ``1/num_batches_tracked``."""
    g = GroupState(Group("g", 5, "inner"), [2, 3, 5])
    with torch.no_grad():
        g.alpha.copy_(torch.tensor([-1e3, 0.0, 0.0]))
    bn = torch.nn.BatchNorm2d(5, momentum=momentum)
    layer, other = SearchBN(bn, g), SearchBN(bn, g)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for a, b in zip(layer.bns, other.bns):
            a.weight.copy_(torch.rand(5, generator=gen) + 0.5)
            a.bias.copy_(torch.randn(5, generator=gen))
            a.num_batches_tracked.fill_(3)
            b.load_state_dict(a.state_dict())
    g.sample(tau=1.0, k=2, generator=torch.Generator().manual_seed(0))
    assert sorted(f[0] for f in g.fragments) == [1, 2] and fusable(layer.bns, g)
    x = torch.randn(4, 5, 3, 3, generator=gen, requires_grad=True)
    ref = mix_fragments(x, g, lambda j, t, c: batch_norm_at(layer.bns[j], t, c))
    new = fused_candidate_bn(other.bns, x, g)
    gx_ref, = torch.autograd.grad(ref.square().sum(), x)
    gx_new, = torch.autograd.grad(new.square().sum(), x)
    assert _rel(ref, new) < 1e-5 and _rel(gx_ref, gx_new) < 1e-5
    for a, b in zip(layer.bns, other.bns):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-6)
        assert int(a.num_batches_tracked) == int(b.num_batches_tracked)
    assert int(layer.bns[0].num_batches_tracked) == 3  # not drawn: untouched


def test_fused_bn_only_where_it_applies():
    """Eval mode, ranked (non-prefix) channels and a single fragment take the K-fragment path."""
    g = GroupState(Group("g", 5, "inner"), [2, 3, 5])
    with torch.no_grad():
        g.alpha.copy_(torch.tensor([-1e3, 0.0, 0.0]))
    layer = SearchBN(torch.nn.BatchNorm2d(5), g)
    g.sample(tau=1.0, k=2, generator=torch.Generator().manual_seed(0))
    assert fusable(layer.bns, g)
    assert not fusable(layer.eval().bns, g)
    layer.train()
    g.set_order(torch.tensor([4, 1, 3, 0, 2]))
    g.sample(tau=1.0, k=2, generator=torch.Generator().manual_seed(0))
    assert not fusable(layer.bns, g)
    g.sample(tau=1.0, k=1, generator=torch.Generator().manual_seed(0))
    assert not fusable(layer.bns, g)
    assert SearchBN(torch.nn.BatchNorm2d(ops.FUSED_BN_MAX_CHANNELS + 1),
                    GroupState(Group("w", ops.FUSED_BN_MAX_CHANNELS + 1, "inner"), [8, ops.FUSED_BN_MAX_CHANNELS + 1])
                    ).fused is False
