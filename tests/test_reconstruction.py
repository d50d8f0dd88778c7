"""--init reconstruct (tas.prune.reconstruct): every refitted layer against an independent closed-form
least-squares solution built from explicitly shifted inputs, its error against inherit's, and the
train.py path."""
import json

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import perturb_bn

import tas
from tas.cli import run_main
from tas.prune.arch import Arch
from tas.prune.families import describe_model
from tas.prune.reconstruct import layers_to_reconstruct
from tas.nas.supernet import create_supernet

SIZE = (1, 8, 8)


def _teacher_and_arch(name: str = "cifar_resnet20", seed: int = 0, **kwargs) -> tuple[nn.Module, Arch]:
    """A randomly initialised network with trained-looking BNs, and an arch keeping a random half
    (a multiple of the conv groups) of every group, the stage depths all but one block."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=5, in_chans=SIZE[0], **kwargs).eval()
    perturb_bn(model, seed=seed + 1)
    s = create_supernet(model, input_size=SIZE, model_name=name, model_kwargs={"num_classes": 5, "in_chans": 1})
    arch = s.full_arch()
    gen = torch.Generator().manual_seed(seed)
    for gname, g in arch.groups.items():
        q = s.graph.groups[gname].conv_groups
        per = g["channels"] // q
        local = torch.randperm(per, generator=gen)[: max(1, per // 2)]
        g["indices"] = sorted(int(c * per + i) for c in range(q) for i in local)
        g["width"] = len(g["indices"])
    for st in arch.stages.values():
        st["depth"] = max(1, st["blocks"] - 1)
    return model, Arch.from_dict(arch.to_dict())


def _batches(n: int = 3, size: int = 24, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, *SIZE, generator=g) for _ in range(n)]


def _io(model: nn.Module, name: str, xs, output: bool) -> torch.Tensor:
    """The layer's input (or output) over all batches, by a plain forward hook."""
    seen = []
    h = model.get_submodule(name).register_forward_hook(
        lambda _m, i, o: seen.append((o if output else i[0]).detach()))
    with torch.no_grad():
        for x in xs:
            model(x)
    h.remove()
    return torch.cat(seen)


def _design(conv: nn.Conv2d, x: torch.Tensor, group: int) -> torch.Tensor:
    """Rows = output positions, columns = (input channel, ky, kx) of conv group ``group``: built by
    slicing the zero-padded input at every kernel offset (no unfold, no conv)."""
    per = conv.in_channels // conv.groups
    x = x[:, group * per:(group + 1) * per]
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    kh, kw = conv.kernel_size
    xp = F.pad(x, (pw, pw, ph, ph))
    ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = []
    for c in range(per):
        for a in range(kh):
            for b in range(kw):
                sl = xp[:, c, a * dh: a * dh + sh * (ho - 1) + 1: sh, b * dw: b * dw + sw * (wo - 1) + 1: sw]
                cols.append(sl.reshape(-1))
    return torch.stack(cols, 1).double()


def _problem(slim, teacher, arch, graph, name, xs):
    """Per conv group ``(X, Y, W)``: design matrix, teacher targets at the kept outputs, slim weights."""
    layer = slim.get_submodule(name)
    x_in, y = _io(slim, name, xs, output=False), _io(teacher, name, xs, output=True)
    out_group = next(l.out_group for l in graph.layers if l.name == name)
    if out_group is not None:
        y = y[:, arch.groups[out_group]["indices"]]
    if isinstance(layer, nn.Linear):
        probs = [(x_in.double(), y.double(), layer.weight.detach().double().t())]
    else:
        g, per_out = layer.groups, layer.out_channels // layer.groups
        probs = []
        for j in range(g):
            yj = y[:, j * per_out:(j + 1) * per_out].permute(0, 2, 3, 1).reshape(-1, per_out).double()
            wj = layer.weight.detach()[j * per_out:(j + 1) * per_out].reshape(per_out, -1).t().double()
            probs.append((_design(layer, x_in, j), yj, wj))
    if layer.bias is None:
        return probs
    # a bias is the coefficient of a constant feature
    per_out = probs[0][1].shape[1]
    return [(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1), y,
             torch.cat([w, layer.bias.detach()[j * per_out:(j + 1) * per_out].double().view(1, -1)]))
            for j, (x, y, w) in enumerate(probs)]


def _ridge_lstsq(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge regression as an ordinary least-squares problem on the augmented system [X; √λ I]."""
    lam = ridge * (x * x).sum(0).mean()
    d = x.shape[1]
    xa = torch.cat([x, lam.sqrt() * torch.eye(d, dtype=x.dtype)])
    ya = torch.cat([y, torch.zeros(d, y.shape[1], dtype=y.dtype)])
    return torch.linalg.lstsq(xa, ya, driver="gelsd").solution


@pytest.mark.parametrize("name", ["cifar_resnet20"])
def test_every_refitted_layer_is_the_closed_form_least_squares_fit_and_beats_inherit(name):
    teacher, arch = _teacher_and_arch(name)
    graph = describe_model(teacher)
    xs = _batches()
    inherited = tas.materialize(teacher, arch).eval()
    slim = tas.materialize(teacher, arch).eval()
    ridge = 1e-3
    fits = tas.reconstruct(slim, teacher, xs, ridge=ridge)
    present = {n for n, _ in slim.named_modules()}
    expected = [n for n in layers_to_reconstruct(graph, arch) if n in present]
    assert sorted(f.name for f in fits) == sorted(expected) and len(expected) >= 10
    assert "fc" in expected and "layer1.0.conv1" in expected  # the head and a 3x3 conv with pruned inputs
    for fit in fits:
        # A later layer cannot change an earlier one's input, so the final slim network shows each
        # layer the inputs it was fitted on.
        probs = _problem(slim, teacher, arch, graph, fit.name, xs)
        for x, y, w in probs:
            ref = _ridge_lstsq(x, y, ridge)
            assert torch.allclose(w, ref, rtol=1e-3, atol=1e-4 * ref.abs().max()), fit.name
        # the same inputs through the inherited weights: never better than the fit
        slim_layer = slim.get_submodule(fit.name)
        slim.set_submodule(fit.name, inherited.get_submodule(fit.name))  # the inherited weights, same inputs
        w_inh = [w for _, _, w in _problem(slim, teacher, arch, graph, fit.name, xs)]
        slim.set_submodule(fit.name, slim_layer)
        err_fit = sum(float((x @ w - y).square().sum()) for x, y, w in probs)
        err_inh = sum(float((x @ wi - y).square().sum()) for (x, y, _), wi in zip(probs, w_inh))
        sq_y = sum(float(y.square().sum()) for _, y, _ in probs)
        assert err_fit <= err_inh * (1 + 1e-6), fit.name
        # what the function reports is the same pair of errors, relative to the targets' energy
        assert fit.before == pytest.approx(err_inh / sq_y, rel=1e-3, abs=1e-6), fit.name
        assert fit.after == pytest.approx(err_fit / sq_y, rel=1e-3, abs=1e-6), fit.name
    assert sum(f.after for f in fits) < 0.5 * sum(f.before for f in fits)


def test_plain_least_squares_on_the_first_pruned_conv():
    """ridge=0 is ordinary least squares: equal to torch.linalg.lstsq on the explicit design matrix."""
    teacher, arch = _teacher_and_arch(seed=3)
    graph = describe_model(teacher)
    xs = _batches(n=4, size=32)
    slim = tas.materialize(teacher, arch).eval()
    tas.reconstruct(slim, teacher, xs, ridge=0.0)
    (x, y, w), = _problem(slim, teacher, arch, graph, "layer1.0.conv1", xs)
    ref = torch.linalg.lstsq(x, y, driver="gelsd").solution
    assert torch.allclose(w, ref, rtol=1e-3, atol=1e-4 * ref.abs().max())


def test_grouped_convs_are_fitted_per_conv_group():
    """A ResNeXt bottleneck (4 conv groups): each conv group's kept filters are the least-squares fit
    of the teacher's from that group's kept inputs only."""
    teacher, arch = _resnext_teacher_and_arch()
    graph = describe_model(teacher)
    xs = _batches(n=2, size=16)
    slim = tas.materialize(teacher, arch).eval()
    tas.reconstruct(slim, teacher, xs, ridge=1e-3)
    conv = slim.get_submodule("layer1.0.conv2")
    assert conv.groups == 4
    for x, y, w in _problem(slim, teacher, arch, graph, "layer1.0.conv2", xs):
        ref = _ridge_lstsq(x, y, 1e-3)
        assert torch.allclose(w, ref, rtol=1e-3, atol=1e-4 * ref.abs().max())


def _resnext_teacher_and_arch() -> tuple[nn.Module, Arch]:
    from timm.models.resnet import Bottleneck, ResNet

    torch.manual_seed(5)
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=5, in_chans=1, cardinality=4, base_width=4).eval()
    perturb_bn(model, seed=6)
    s = create_supernet(model, input_size=SIZE, model_name="resnet", model_kwargs={"num_classes": 5, "in_chans": 1})
    arch = s.full_arch()
    gen = torch.Generator().manual_seed(5)
    for gname in ("stem", "layer1.0.conv1", "layer1.0.conv2"):
        g, q = arch.groups[gname], s.graph.groups[gname].conv_groups
        per = g["channels"] // q
        local = torch.randperm(per, generator=gen)[: per // 2]
        g["indices"] = sorted(int(c * per + i) for c in range(q) for i in local)
        g["width"] = len(g["indices"])
    return model, Arch.from_dict(arch.to_dict())


@pytest.mark.slow
def test_train_py_init_reconstruct(tmp_path, teacher_run, search_script, train_script, tiny_flags, capsys):
    arch_dir = tmp_path / "uniform"
    assert search_script.main(["--method", "uniform", "--teacher", str(teacher_run), "--dataset", "digits",
                               "--img-size", "16", "--flops-ratio", "0.5", "--device", "cpu", "--no-progress",
                               "--output", str(arch_dir)]) == 0
    flags = [f for f in tiny_flags if f not in ("--model", "cifar_resnet20")]
    out = tmp_path / "slim"
    capsys.readouterr()
    assert train_script.main(flags + ["--arch", str(arch_dir), "--teacher", str(teacher_run), "--init",
                                      "reconstruct", "--recon-batches", "2", "--output", str(out)]) == 0
    assert "reconstruct: " in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["init"] == "reconstruct" and config["recon_batches"] == 2
    assert tas.load_slim(out) is not None


def test_recon_batches_must_be_positive(tmp_path, train_script, tiny_flags, capsys):
    code = run_main(train_script.main, tiny_flags + ["--init", "reconstruct", "--recon-batches", "0",
                                                     "--output", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "error: --recon-batches must be a positive integer" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
