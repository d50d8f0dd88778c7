"""The pruning-limit estimate (tas.prune.limits) against an independent computation on a tiny network:
hand-listed group weights, the exact Hessian by torch.autograd.functional.hessian, and the paper's
formula evaluated directly; the Lanczos quadrature against a dense eigendecomposition."""
import json
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import perturb_bn
from torch.func import functional_call

from tas.prune.limits import estimate_limits, lanczos, prunable_fraction
from tas.models.cifar_resnet import CifarResNet

#: each group's weights and the dimension its channels index, listed by hand from the model's code
GROUPS = {
    "stem": [("conv1.weight", 0), ("bn1.weight", 0), ("bn1.bias", 0), ("layer1.0.conv1.weight", 1),
             ("layer1.0.conv2.weight", 0), ("layer1.0.bn2.weight", 0), ("layer1.0.bn2.bias", 0),
             ("layer2.0.downsample.0.weight", 1), ("layer2.0.conv1.weight", 1)],
    "layer1.0.conv1": [("layer1.0.conv1.weight", 0), ("layer1.0.bn1.weight", 0), ("layer1.0.bn1.bias", 0),
                       ("layer1.0.conv2.weight", 1)],
    "layer3": [("layer3.0.downsample.0.weight", 0), ("layer3.0.downsample.1.weight", 0),
               ("layer3.0.downsample.1.bias", 0), ("layer3.0.conv2.weight", 0), ("layer3.0.bn2.weight", 0),
               ("layer3.0.bn2.bias", 0), ("fc.weight", 1)],
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = CifarResNet(layers=(1, 1, 1), widths=(3, 3, 4), num_classes=3, in_chans=1).double().eval()
    perturb_bn(model, seed=1)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(6, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
               for _ in range(2)]
    return model, batches


def _reference(model, batches, group):
    """``(D, ε, eigenvalues, per-channel squared norms)`` computed without tas.prune.limits."""
    names = [n for n, _ in GROUPS[group]]
    params = dict(model.named_parameters())
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss(flat):
        sub, i = {}, 0
        for n in names:
            sub[n] = flat[i:i + params[n].numel()].view_as(params[n])
            i += params[n].numel()
        return sum(F.cross_entropy(functional_call(model, sub, (x,)), y) for x, y in batches) / len(batches)

    hess = torch.autograd.functional.hessian(loss, flat0)
    with torch.no_grad():
        eps = float(torch.stack([F.cross_entropy(model(x), y) for x, y in batches]).std())
    channels = params[GROUPS[group][0][0]].shape[GROUPS[group][0][1]]
    sq = torch.zeros(channels, dtype=torch.float64)
    for c in range(channels):  # the weights zeroed when channel c is removed
        for n, dim in GROUPS[group]:
            sq[c] += params[n].detach().select(dim, c).square().sum()
    return flat0.numel(), eps, torch.linalg.eigvalsh(hess), sq


@pytest.mark.parametrize("group", ["layer3", pytest.param("stem", marks=pytest.mark.slow),
                                   pytest.param("layer1.0.conv1", marks=pytest.mark.slow)])
def test_limit_matches_the_formula_on_the_exact_hessian(tiny, group):
    model, batches = tiny
    dim, eps, evals, sq = _reference(model, batches, group)
    est = estimate_limits(model, batches, exact_max_dim=1000, groups=[group])[group]
    assert est.params == dim and est.epsilon == pytest.approx(eps, rel=1e-9)
    assert est.curvature == pytest.approx(float(evals.abs().mean()), rel=1e-6)
    # the paper's crossing, scanned directly: remove the smallest-norm channels one by one
    order = torch.sort(sq).values
    width = sq.numel()
    for k in range(1, sq.numel()):
        r2 = float(order[:k].sum())
        rho = float((2 * eps / (2 * eps + evals.abs() * r2)).mean())
        w, p, rho_est = est.curve[k - 1]
        assert (w, p) == (sq.numel() - k, pytest.approx(k / sq.numel()))
        assert rho_est == pytest.approx(rho, rel=1e-6)
        if k / sq.numel() > rho:
            break
        width = sq.numel() - k
    assert est.width == width


def test_a_sharper_loss_allows_less_pruning(tiny):
    """Scaling the loss spread ε down (a stricter tolerance) can only narrow what is prunable."""
    model, batches = tiny
    est = estimate_limits(model, batches, exact_max_dim=1000, groups=["layer3"])["layer3"]
    w, p, rho = est.curve[0]
    dim, eps, evals, sq = _reference(model, batches, "layer3")
    assert 0 < rho < 1  # neither flat nor infinitely sharp: the formula is exercised in between
    assert prunable_fraction(evals.view(1, -1), torch.full((1, dim), 1 / dim, dtype=torch.float64), eps / 10,
                             float(torch.sort(sq).values[0].sqrt())) < rho


def test_lanczos_quadrature_against_a_dense_eigendecomposition():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 40, generator=g, dtype=torch.float64)
    a = (a + a.T) / 2
    v = torch.randn(40, generator=g, dtype=torch.float64)
    lam, u = torch.linalg.eigh(a)
    proj = (u.T @ v).square() / v.square().sum()

    def f(x):
        return 0.3 / (0.3 + x.abs() * 2.0)

    nodes, weights = lanczos(lambda x: a @ x, v, steps=40)  # full length: exact for any f
    assert float((weights * f(nodes)).sum()) == pytest.approx(float((proj * f(lam)).sum()), rel=1e-8)
    nodes, weights = lanczos(lambda x: a @ x, v, steps=3)  # 3 nodes: exact up to degree 5
    assert float((weights * nodes ** 5).sum()) == pytest.approx(float((proj * lam ** 5).sum()), rel=1e-8)
    assert float(weights.sum()) == pytest.approx(1.0)


@pytest.mark.slow
def test_stochastic_quadrature_tracks_the_exact_spectrum(tiny):
    """SLQ (what larger groups use) against the exact eigenvalues: ρ within a few points."""
    model, batches = tiny
    exact = estimate_limits(model, batches, exact_max_dim=1000, groups=["stem"])["stem"]
    slq = estimate_limits(model, batches, exact_max_dim=0, steps=30, probes=8, groups=["stem"])["stem"]
    for (w1, _, r1), (w2, _, r2) in zip(exact.curve, slq.curve):
        assert w1 == w2 and abs(r1 - r2) < 0.1
    assert slq.curvature == pytest.approx(exact.curvature, rel=0.25)


def test_python_m_tas_analyze_on_a_search_run(tmp_path, teacher_run, search_script, capsys):
    from tas.analyze import main
    from tas.cli import run_main

    arch_dir = tmp_path / "uniform"
    assert search_script.main(["--method", "uniform", "--teacher", str(teacher_run), "--dataset", "digits",
                               "--img-size", "16", "--flops-ratio", "0.5", "--device", "cpu", "--no-progress",
                               "--output", str(arch_dir)]) == 0
    capsys.readouterr()
    out = tmp_path / "limits.json"
    assert run_main(main, [str(arch_dir), "--groups", "layer1.0.conv1", "--batches", "2", "--batch-size", "16",
                           "--steps", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layer1.0.conv1" in text and "searched" in text
    result = json.loads(out.read_text())
    arch = json.loads((arch_dir / "arch.json").read_text())
    row = result["groups"]["layer1.0.conv1"]
    assert list(result["groups"]) == ["layer1.0.conv1"] and result["analysed"] == str(teacher_run)
    assert row["searched_width"] == arch["groups"]["layer1.0.conv1"]["width"]
    assert 1 <= row["limit_width"] <= row["channels"] == 16 and result["calibration_images"] == 32
    for argv, message in (([str(tmp_path / "nope")], "not found"), ([str(arch_dir), "--batches", "1"], "--batches"),
                          ([str(arch_dir), "--groups", "layer9"], "no such channel group")):
        assert run_main(main, argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


@pytest.mark.slow
def test_search_limit_widths_drops_candidates_below_the_estimate(tmp_path, teacher_run, search_script, capsys):
    from tas.io.checkpoint import load_state

    out = tmp_path / "bounded"
    assert search_script.main(["--teacher", str(teacher_run), "--dataset", "digits", "--img-size", "16", "--limit",
                               "128", "--batch-size", "32", "--epochs", "1", "--flops-ratio", "0.5", "--device", "cpu",
                               "--no-progress", "--limit-widths", "--output", str(out)]) == 0
    assert re.search(r"limit widths: the pruning-limit estimate .*drops \d+ candidate widths", capsys.readouterr().out)
    bounded = json.loads(load_state(out)["bounded_widths"])
    arch = json.loads((out / "arch.json").read_text())
    space = arch["meta"]["space"]
    assert space["widths"] == bounded  # the search ran on the bounded candidates
    for name, g in arch["groups"].items():
        if name in bounded:
            assert g["width"] in set(bounded[name]) | {g["channels"]}
    # something was dropped: the default space's smallest ratio (0.3) is below some group's limit
    assert any(min(ws, default=10 ** 6) > round(0.3 * arch["groups"][n]["channels"]) for n, ws in bounded.items())
