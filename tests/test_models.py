"""Model registry, the factory, FLOPs/params, and the run-directory round trip."""
from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from tas.io.checkpoint import save_weights
from tas.errors import CheckpointError, ModelError
from tas.prune.flops import count_flops, count_params
from tas.models.factory import create_model
from tas.io.rundir import save_run
from tas.prune.load import load_run


def test_cifar_resnets_registered():
    names = timm.list_models("cifar_resnet*")
    for name in ("cifar_resnet20", "cifar_resnet56"):
        assert name in names


def test_timm_create_with_channels_and_classes():
    model = timm.create_model("cifar_resnet20", in_chans=1, num_classes=7).eval()
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 7)
    assert model.conv1.in_channels == 1


@pytest.mark.parametrize("name,params", [("cifar_resnet20", 272_474), ("cifar_resnet56", 855_770)])
def test_param_counts(name, params):
    assert count_params(create_model(name, num_classes=10, in_chans=3)) == params


@pytest.mark.parametrize("name,size", [("cifar_resnet20", (3, 32, 32)), ("resnet18", (3, 64, 64))])
def test_flops_match_torch_flop_counter(name, size):
    model = create_model(name, num_classes=10, in_chans=3).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *size))
    assert count_flops(model, size) == counter.get_total_flops() // 2
    if name == "cifar_resnet20":
        assert count_flops(model, size) == 40_813_184  # ~41M MACs, as in the paper


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError) as e:
        create_model("cifar_resnet21", num_classes=10, in_chans=3)
    msg = str(e.value)
    assert "unknown model 'cifar_resnet21'" in msg and "cifar_resnet20" in msg
    assert "\n" not in msg and "list_models" in msg


def test_pretrained_for_cifar_resnet_is_a_model_error():
    with pytest.raises(ModelError, match="--pretrained-path"):
        create_model("cifar_resnet20", num_classes=10, in_chans=3, pretrained=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_path_round_trip(tmp_path, suffix):
    src = create_model("cifar_resnet20", num_classes=10, in_chans=3)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_weights(path, src.state_dict())
    else:
        torch.save({"state_dict": src.state_dict()}, path)
    dst = create_model("cifar_resnet20", num_classes=10, in_chans=3, pretrained_path=path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_pretrained_path_adapts_head_and_input(tmp_path):
    src = create_model("cifar_resnet20", num_classes=10, in_chans=3)
    path = tmp_path / "w.safetensors"
    save_weights(path, src.state_dict())
    dst = create_model("cifar_resnet20", num_classes=4, in_chans=1, pretrained_path=path)
    assert dst.fc.out_features == 4 and dst.conv1.in_channels == 1
    assert torch.equal(dst.layer3[0].conv1.weight, src.layer3[0].conv1.weight)


def test_pretrained_path_errors(tmp_path):
    other = tmp_path / "r56.safetensors"
    save_weights(other, create_model("cifar_resnet56", num_classes=10, in_chans=3).state_dict())
    with pytest.raises(ModelError, match="do not fit model cifar_resnet20"):
        create_model("cifar_resnet20", num_classes=10, in_chans=3, pretrained_path=other)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(other.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        create_model("cifar_resnet20", num_classes=10, in_chans=3, pretrained_path=broken)
    with pytest.raises(CheckpointError, match="not found"):
        create_model("cifar_resnet20", num_classes=10, in_chans=3, pretrained_path=tmp_path / "nope.pth")


def test_save_and_load_run(tmp_path):
    model = create_model("cifar_resnet20", num_classes=5, in_chans=1).eval()
    save_run(tmp_path, model, model_name="cifar_resnet20", model_kwargs={"num_classes": 5, "in_chans": 1},
             input_size=(1, 16, 16), metrics={"top1": 1.0}, extra_config={"dataset": "digits"})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"version": 1, "model": "cifar_resnet20", "model_kwargs": {"num_classes": 5, "in_chans": 1},
                      "input_size": [1, 16, 16], "dataset": "digits"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"top1": 1.0}
    loaded, cfg = load_run(tmp_path)
    assert cfg == config and not loaded.training
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model(x), loaded(x))


def test_load_run_errors(tmp_path, teacher_run):
    with pytest.raises(CheckpointError, match="config.json"):
        load_run(tmp_path)  # no config.json
    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_run(run)
    (run / "config.json").write_text(json.dumps({**config, "model": "cifar_resnet56"}))
    with pytest.raises(ModelError, match="do not fit model cifar_resnet56"):
        load_run(run)
    (run / "config.json").write_text(json.dumps(config))
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_run(run)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_cifar_resnet_scripts_like_timm_resnets_and_keeps_its_state_dict_keys():
    from conftest import perturb_bn

    from tas.prune.materialize import materialize
    from tas.models.cifar_resnet import CifarResNet
    from tas.nas.supernet import create_supernet

    model = create_model("cifar_resnet20", num_classes=10, in_chans=3).eval()
    perturb_bn(model)
    keys = list(model.state_dict())
    # timm ResNet's names, which saved weights and the ResNet adapter rely on
    assert keys[:2] == ["conv1.weight", "bn1.weight"] and "layer3.2.bn2.running_var" in keys and keys[-1] == "fc.bias"
    assert {k.split(".")[0] for k in keys} == {"conv1", "bn1", "layer1", "layer2", "layer3", "fc"}
    arch = create_supernet(model, input_size=(3, 32, 32)).random_arch(torch.Generator().manual_seed(0))
    slim = materialize(model, arch)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for net in (model, slim.eval()):
            scripted = torch.jit.script(net)
            assert torch.allclose(scripted(x), net(x), atol=1e-6)
    with pytest.raises(TypeError, match="three stages"):
        CifarResNet(layers=(3, 3, 3, 3), widths=(16, 32, 64, 128))


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_mobilenetv2"])
def test_features_only_is_refused_not_ignored(name):
    with pytest.raises(ModelError, match="does not support features_only=True"):
        timm.create_model(name, features_only=True)
    assert timm.create_model(name, num_classes=10, features_only=False).num_classes == 10
