"""Materialisation against an independent oracle, the search's ECA weights, the one check of a spec
against a model (grouped convs included), and the slim network as a timm feature backbone."""
import json

import pytest
import timm
import torch
import torch.nn as nn
from conftest import perturb_bn
from conftest import grouped_random_indices, perturb_like_search, search_weights, zeroing_oracle
from timm.layers import EcaModule
from timm.models import FeatureListNet

from tas.cli import run_main
from tas.errors import ArchError
from tas.prune.materialize import materialize
from tas.io.rundir import save_run
from tas.nas.supernet import create_supernet

SIZE = (3, 32, 32)


def _supernet(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=7, **kwargs).eval()
    perturb_bn(model, seed=seed + 100)  # a teacher whose residual branches are not zero-initialised
    s = create_supernet(model, input_size=SIZE, model_name=name)
    perturb_like_search(s, seed=seed)
    return s.eval(), model


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest output of ``b``."""
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-6))


# ---- the oracle ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "seresnext26d_32x4d", "efficientnet_b0", "mobilenetv3_small_050"])
def test_slim_network_equals_the_zeroing_oracle(name):
    """ResNet (basic blocks), ResNeXt + SE + deep stem, EfficientNet (SE, depthwise), MobileNetV3
    (hard-swish SE, BN-less head conv): the slim network of a perturbed supernet computes what the
    original network computes with the same weights, pruned channels zeroed and dropped blocks
    removed; so does hard mode, and so does inheriting the teacher's weights."""
    s, model = _supernet(name)
    arch = grouped_random_indices(s, s.random_arch(torch.Generator().manual_seed(3)), seed=4)
    assert arch.flops < arch.full_flops
    x = torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = zeroing_oracle(s, arch)(x)
        slim = materialize(s, arch).eval()
        assert _max_err(slim(x), expected) <= 1e-4
        assert _max_err(s.set_arch(arch)(x), expected) <= 1e-4
        # the pruning matters: the same weights without zeroing compute something else
        full = zeroing_oracle(s, s.full_arch())
        full.load_state_dict(search_weights(s, arch))
        assert _max_err(full(x), expected) > 1e-2
        # --init inherit: the teacher's own weights, the same oracle
        assert _max_err(materialize(model, arch).eval()(x), zeroing_oracle(model, arch)(x)) <= 1e-4


def _eca_modules(model: nn.Module) -> list[EcaModule]:
    return [m for m in model.modules() if isinstance(m, EcaModule)]


@pytest.fixture(scope="module")
def eca():
    s, model = _supernet("ecaresnet26t", seed=1)
    arch = grouped_random_indices(s, s.random_arch(torch.Generator().manual_seed(6)), seed=7)
    return s, model, arch, torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(8))


def test_eca_weights_of_the_search_reach_the_slim_network(eca):
    """The slim network carries the ECA convs the search trained, not the teacher's: it equals
    hard mode exactly."""
    s, model, arch, x = eca
    teacher_eca = _eca_modules(model)[0].conv.weight
    searched_eca = _eca_modules(s.model)[0].conv.weight
    assert not torch.allclose(teacher_eca, searched_eca)
    with torch.no_grad():
        slim = materialize(s, arch).eval()
        assert torch.equal(_eca_modules(slim)[0].conv.weight, searched_eca)
        assert _max_err(slim(x), s.set_arch(arch)(x)) <= 1e-4


def test_eca_against_the_zeroing_oracle(eca):
    """ECA is only approximate against the oracle: its 1-d conv along the channels reads the zeroed
    channels between kept ones, the slim network's reads the kept channels side by side. With
    centre-tap-only ECA kernels (searched values, unlike the teacher's) the conv does not mix
    channels, and the oracle is exact again."""
    s, model, arch, x = eca
    with torch.no_grad():
        general = _max_err(materialize(s, arch).eval()(x), zeroing_oracle(s, arch)(x))
        gen = torch.Generator().manual_seed(9)
        for m in _eca_modules(s.model):
            w = m.conv.weight
            centre = torch.zeros_like(w)
            centre[..., w.shape[-1] // 2] = 0.5 + torch.rand(1, generator=gen)
            w.copy_(centre)
        exact = _max_err(materialize(s, arch).eval()(x), zeroing_oracle(s, arch)(x))
    assert exact <= 1e-4
    assert 1e-4 < general < 0.5, general  # the documented approximation, small but real


# ---- one check of a spec against a model -----------------------------------------------------
def test_grouped_conv_spec_must_keep_the_same_local_channels_in_every_conv_group():
    model = timm.create_model("seresnext26d_32x4d", num_classes=7).eval()
    s = create_supernet(model, input_size=SIZE, model_name="seresnext26d_32x4d")
    arch = s.full_arch()
    # 128 channels feeding a 32-group conv, 4 per conv group: keep all 4 of the first 24, none of the last 8
    arch.groups["layer1.0.conv1"].update(width=96, indices=list(range(96)))
    message = r"group layer1\.0\.conv1 feeds a conv with 32 groups.*conv group 24 keeps \[\]"
    for build in (lambda: materialize(model, arch), lambda: materialize(s, arch), lambda: s.set_arch(arch)):
        with pytest.raises(ArchError, match=message):
            build()
    # three of four at the same local positions in every conv group is a valid spec
    arch.groups["layer1.0.conv1"]["indices"] = [c for c in range(128) if c % 4 != 2]
    x = torch.randn(1, *SIZE)
    with torch.no_grad():
        assert _max_err(materialize(model, arch)(x), zeroing_oracle(model, arch)(x)) <= 1e-4
    # a width that is not a multiple of the conv groups is refused by the same check
    arch.groups["layer1.0.conv1"].update(width=97, indices=list(range(97)))
    with pytest.raises(ArchError, match="layer1.0.conv1"):
        materialize(model, arch)


def test_train_py_refuses_a_bad_grouped_spec_with_exit_2(tmp_path, train_script, capsys):
    size, kwargs = (1, 32, 32), {"num_classes": 10, "in_chans": 1, "layers": [1, 1, 1, 1]}  # digits, small
    model = timm.create_model("seresnext26d_32x4d", **kwargs).eval()
    save_run(tmp_path / "teacher", model, model_name="seresnext26d_32x4d", model_kwargs=kwargs, input_size=size)
    arch = create_supernet(model, input_size=size, model_name="seresnext26d_32x4d", model_kwargs=kwargs).full_arch()
    arch.groups["layer1.0.conv1"].update(width=96, indices=list(range(96)))
    (tmp_path / "arch.json").write_text(json.dumps(arch.to_dict()))
    out = tmp_path / "slim"
    argv = ["--arch", str(tmp_path / "arch.json"), "--teacher", str(tmp_path / "teacher"), "--dataset", "digits",
            "--limit", "64", "--epochs", "1", "--no-progress", "--device", "cpu", "--output", str(out)]
    assert run_main(train_script.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "layer1.0.conv1" in err and "Traceback" not in err, err
    assert not (out / "model.safetensors").exists()


# ---- the slim network as a feature backbone --------------------------------------------------
def _slim(name: str, streams: dict[str, int]) -> nn.Module:
    """``name`` materialised with the given stream widths (every other group kept whole)."""
    model = timm.create_model(name, num_classes=7).eval()
    s = create_supernet(model, input_size=SIZE, model_name=name)
    widths = {n: streams.get(n, g.channels) for n, g in s.graph.groups.items()}
    arch = s.make_arch(widths, {n: st.num_blocks for n, st in s.graph.stages.items()})
    return materialize(model, arch).eval()


@pytest.mark.parametrize("name, streams, expected", [
    ("resnet18", {"stem": 48, "layer2": 40, "layer3": 152, "layer4": 304}, [48, 48, 40, 152, 304]),
    ("efficientnet_b0", {"blocks.0": 8, "blocks.1": 16, "blocks.2": 24, "blocks.4": 80, "blocks.6": 160},
     [8, 16, 24, 80, 160]),
    ("mobilenetv3_small_050", {"stem": 8, "blocks.1": 8, "blocks.2": 16, "blocks.5": 144}, [8, 8, 8, 16, 144]),
])
def test_slim_backbone_reports_its_own_feature_widths(name, streams, expected):
    slim = _slim(name, streams)
    x = torch.randn(1, *SIZE)
    with torch.no_grad():
        # timm hooks a ResNet's stages directly and an EfficientNet's inside its `blocks` Sequential
        features = FeatureListNet(slim, flatten_sequential=not name.startswith("resnet"))
        assert features.feature_info.channels() == expected
        assert [f.shape[1] for f in features(x)] == expected
        inter = slim.forward_intermediates(x, intermediates_only=True)
        assert [f.shape[1] for f in inter] == expected
        logits, inter = slim.forward_intermediates(x)
        assert [f.shape[1] for f in inter] == expected
        assert torch.allclose(slim.forward_head(logits), slim(x), atol=1e-5)


def test_slim_network_keeps_the_source_dtype():
    model = timm.create_model("resnet18", num_classes=7).double().eval()
    arch = create_supernet(model, input_size=SIZE).random_arch(torch.Generator().manual_seed(0))
    slim = materialize(model, arch)
    assert {p.dtype for p in slim.parameters()} == {torch.float64}
    with torch.no_grad():
        assert slim(torch.randn(1, *SIZE, dtype=torch.float64)).dtype == torch.float64


def test_a_group_out_of_a_grouped_conv_needs_only_equal_counts_per_conv_group():
    """layer1.0.conv2 comes out of the grouped 3x3 (read by the 1x1 conv3): each output channel has
    its own filter, so conv groups may keep different local positions, only as many of them."""
    torch.manual_seed(0)
    model = timm.create_model("seresnext26d_32x4d", num_classes=7).eval()
    perturb_bn(model)
    s = create_supernet(model, input_size=SIZE, model_name="seresnext26d_32x4d")
    arch = s.full_arch()
    per = 4  # 128 channels, 32 conv groups; conv group q drops local position q % 4
    keep = [q * per + p for q in range(32) for p in range(per) if p != q % per]
    arch.groups["layer1.0.conv2"].update(width=96, indices=keep)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert _max_err(materialize(model, arch).eval()(x), zeroing_oracle(model, arch)(x)) <= 1e-4
        assert _max_err(s.set_arch(arch)(x), zeroing_oracle(model, arch)(x)) <= 1e-4
    # unequal counts are still refused, naming the rule for this side
    arch.groups["layer1.0.conv2"].update(width=96, indices=list(range(96)))
    with pytest.raises(ArchError, match=r"layer1\.0\.conv2 comes out of a conv with 32 groups.*as many channels"):
        materialize(model, arch)
