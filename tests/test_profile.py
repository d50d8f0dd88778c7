"""tas.nas.profile: the search-speed tools, against independent counts."""
from __future__ import annotations

import timm
import torch

import tas  # noqa: F401  (registers cifar_resnet*)
from tas.nas.profile import op_table, sampled_flops
from tas.nas.supernet import create_supernet
from tas.prune.flops import count_flops

SIZE = (3, 32, 32)


def test_sampled_flops_is_the_flops_of_the_sampled_widths():
    torch.manual_seed(0)
    dense = timm.create_model("cifar_resnet20", num_classes=10)
    s = create_supernet(dense, input_size=SIZE, model_name="cifar_resnet20")
    s.generator = torch.Generator().manual_seed(0)
    s.k = 1
    with torch.no_grad():  # every group all but certain to sample its narrowest candidate
        for g in s.groups().values():
            if g.alpha is not None:
                g.alpha.fill_(-30.0)
                g.alpha[min(range(len(g.widths)), key=lambda i: g.widths[i])] = 30.0
    active, candidates = sampled_flops(s, draws=3)
    widths = {n: min(g.widths) for n, g in s.groups().items()}
    depths = {n: st.num_blocks for n, st in s.graph.stages.items()}
    slim, _ = s.slim_copy(s.make_arch(widths, depths))
    expected = count_flops(slim, SIZE) / count_flops(dense, SIZE)
    assert min(widths.values()) < max(g.channels for g in s.groups().values())  # the check is not trivial
    assert abs(active - expected) < 1e-6, (active, expected)
    assert 0.0 < candidates <= 1.0


def test_op_table_counts_operators_per_step():
    a = torch.randn(8, 8)

    def step() -> None:
        for _ in range(3):
            torch.mm(a, a)

    table = op_table({"mm": step}, repeats=4, top=20)
    rows = {r.name: r for r in table["mm"]}
    assert rows["aten::mm"].calls_per_step == 3
    assert table["mm"][-1].name == "(all operators)"
    assert table["mm"][-1].ms_per_step >= rows["aten::mm"].ms_per_step > 0
