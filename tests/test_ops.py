"""Search-mode forward values of the searchable modules against hand computations.

A group of 5 channels with candidate widths 2, 3, 5 is forced to sample candidates 1 (width 3) and
2 (width 5); a 1×1 conv with known weights maps the input pixel (1, 2) to channels
``c = (1, 2, 3, 0, 5)``, and each candidate's BN has known statistics (eps 0), so every number
below can be checked on paper.
"""
import pytest
import torch
import torch.nn as nn

from tas.prune.graph import Group
from tas.nas.ops import SearchBN, SearchConv, SearchStage
from tas.nas.groups import GroupState

X = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0], [-1.0, 3.0]])  # c = W @ (1, 2) = (1, 2, 3, 0, 5)
BN_STATS = {  # candidate: (running mean, running var, weight, bias)
    0: ([100.0] * 5, [1.0] * 5, [1.0] * 5, [0.0] * 5),  # never sampled: using it would show
    1: ([1.0, 0.0, 1.0, 2.0, 1.0], [4.0, 1.0, 1.0, 4.0, 1.0], [1.0, 2.0, 1.0, 1.0, 3.0], [0.0, 0.0, 1.0, 0.0, 0.0]),
    2: ([0.0, 0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 4.0, 1.0, 4.0], [1.0] * 5, [0.0, 1.0, 0.0, 0.0, 0.0]),
}


def _group(order: list[int] | None = None) -> GroupState:
    g = GroupState(Group("g", 5, "inner"), [2, 3, 5])
    with torch.no_grad():
        g.alpha.copy_(torch.tensor([-1e3, 0.0, 0.0]))  # candidate 0 is (practically) never drawn
    if order is not None:
        g.set_order(torch.tensor(order))
    g.sample(tau=1.0, k=2, generator=torch.Generator().manual_seed(0))
    assert sorted(f[0] for f in g.fragments) == [1, 2]
    return g


def _weights(g: GroupState) -> tuple[float, float]:
    w = {j: weight.item() for j, _, _, weight in g.fragments}
    assert 0 < w[1] < 1 and w[1] + w[2] == pytest.approx(1.0)
    return w[1], w[2]


def _conv_bn(g: GroupState) -> nn.Module:
    conv = nn.Conv2d(2, 5, 1, bias=False)
    bn = nn.BatchNorm2d(5, eps=0.0)
    with torch.no_grad():
        conv.weight.copy_(W.view(5, 2, 1, 1))
    search_bn = SearchBN(bn, g)
    with torch.no_grad():
        for j, stats in BN_STATS.items():
            b = search_bn.bns[j]
            for t, v in zip((b.running_mean, b.running_var, b.weight, b.bias), stats):
                t.copy_(torch.tensor(v))
    return nn.Sequential(SearchConv(conv, None, g), search_bn).eval()


def test_cwi_mixture_of_per_candidate_bns_prefix():
    g = _group()
    w1, w2 = _weights(g)
    # candidate 1: channels 0..2 through BN 1: ((1-1)/2·1+0, (2-0)/1·2+0, (3-1)/1·1+1) = (0, 4, 3);
    # CWI 3 → 5 averages inputs {0}, {0,1}, {1}, {1,2}, {2}: (0, 2, 4, 3.5, 3)
    frag1 = torch.tensor([0.0, 2.0, 4.0, 3.5, 3.0])
    # candidate 2: all channels through BN 2: (1, 2+1, 3/2, 0, (5-1)/2) = (1, 3, 1.5, 0, 2)
    frag2 = torch.tensor([1.0, 3.0, 1.5, 0.0, 2.0])
    with torch.no_grad():
        out = _conv_bn(g)(X).view(-1)
    assert torch.allclose(out, w1 * frag1 + w2 * frag2, atol=1e-6)


def test_cwi_mixture_of_per_candidate_bns_ranked_channels():
    """A ranking (SA++) makes candidate 1 keep channels {1, 3, 4}: BN 1 at those channel ids."""
    g = _group(order=[4, 1, 3, 0, 2])
    w1, w2 = _weights(g)
    # channels 1, 3, 4 through BN 1: ((2-0)/1·2, (0-2)/2·1, (5-1)/1·3) = (4, -1, 12);
    # CWI 3 → 5: (4, (4-1)/2, -1, (-1+12)/2, 12)
    frag1 = torch.tensor([4.0, 1.5, -1.0, 5.5, 12.0])
    frag2 = torch.tensor([1.0, 3.0, 1.5, 0.0, 2.0])
    with torch.no_grad():
        out = _conv_bn(g)(X).view(-1)
    assert torch.allclose(out, w1 * frag1 + w2 * frag2, atol=1e-6)


def test_conv_without_bn_mixes_its_own_fragments():
    """A group no BN writes mixes at the conv: c[:3] = (1, 2, 3) stretched to (1, 1.5, 2, 2.5, 3)."""
    g = _group()
    w1, w2 = _weights(g)
    conv = nn.Conv2d(2, 5, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(W.view(5, 2, 1, 1))
        out = SearchConv(conv, None, g, mix=True)(X).view(-1)
    expected = w1 * torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]) + w2 * torch.tensor([1.0, 2.0, 3.0, 0.0, 5.0])
    assert torch.allclose(out, expected, atol=1e-6)


class _Affine(nn.Module):
    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x + self.b


def _stage(depths: list[int]) -> SearchStage:
    # x = (1, -2): after block 1 (2x+1) (3, -3); block 2 (x-3) (0, -6); block 3 (3x-1) (-1, -19)
    return SearchStage(nn.Sequential(_Affine(2, 1), _Affine(1, -3), _Affine(3, -1)), "s", depths)


@pytest.mark.parametrize("depths,mix,expected", [
    ([1, 2, 3], {1: 0.2, 2: 0.5, 3: 0.3}, [0.2 * 3 + 0.3 * -1, 0.2 * -3 + 0.5 * -6 + 0.3 * -19]),
    ([2, 3], {2: 0.25, 3: 0.75}, [0.75 * -1, 0.25 * -6 + 0.75 * -19]),
    ([1, 2], {1: 0.6, 2: 0.4}, [0.6 * 3, 0.6 * -3 + 0.4 * -6]),  # block 3 never runs
])
def test_depth_mixture_sums_weighted_outputs_after_each_candidate_depth(depths, mix, expected):
    stage = _stage(depths)
    stage.mix = {d: torch.tensor(q) for d, q in mix.items()}
    out = stage(torch.tensor([1.0, -2.0]))
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6)


def test_hard_depth_runs_the_first_blocks_only():
    stage = _stage([1, 2, 3])
    stage.depth = 2
    assert torch.equal(stage(torch.tensor([1.0, -2.0])), torch.tensor([0.0, -6.0]))
