"""Stage 3: the KD loss, --init inherit/scratch, and the whole pipeline as a user runs it."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import zeroing_oracle

import tas
from tas.prune.arch import Arch
from tas.cli import run_main
from tas.train.distill import kd_loss
from tas.train.engine import evaluate
from tas.prune.load import load_run

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--limit", "256", "--batch-size", "32", "--no-progress", "--device", "cpu"]


def test_kd_loss_matches_formula_on_hand_made_logits():
    zs = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    zt = torch.tensor([[1.0, 1.5, -0.5], [3.0, -1.0, 0.0]])
    y = torch.tensor([0, 2])
    alpha, t = 0.9, 4.0

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    s, tt = zs.numpy().astype(np.float64), zt.numpy().astype(np.float64)
    ce = -np.mean(np.log(softmax(s)[np.arange(2), y.numpy()]))
    ps, pt = softmax(s / t), softmax(tt / t)
    kl = np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    expected = (1 - alpha) * ce + alpha * t * t * kl
    total, ce_t, kd_t = kd_loss(zs, zt, y, alpha, t)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert float(ce_t) == pytest.approx(ce, rel=1e-5) and float(kd_t) == pytest.approx(t * t * kl, rel=1e-5)
    assert float(kd_loss(zs, zs, y, 1.0, t)[0]) == pytest.approx(0.0, abs=1e-6)


def _run(script, *args):
    r = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True)
    return r


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, teacher_run):
    """teacher (shared fixture) → search.py → train.py --arch → python -m tas.export, as subprocesses."""
    root = tmp_path_factory.mktemp("pipeline")
    r = _run("search.py", *TINY, "--teacher", str(teacher_run), "--flops-ratio", "0.5", "--epochs", "2",
             "--output", str(root / "search"))
    assert r.returncode == 0, r.stderr
    r = _run("train.py", *TINY, "--arch", str(root / "search" / "arch.json"), "--teacher", str(teacher_run),
             "--epochs", "1", "--log-every", "2", "--output", str(root / "slim"))
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "tas.export", str(root / "slim"), "--output", str(root / "slim.onnx"),
                        "--repeats", "3", "--batch-sizes", "1", "4"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return root, teacher_run, json.loads(r.stdout.strip().splitlines()[-1])


def test_pipeline_artefacts(pipeline):
    root, teacher, exported = pipeline
    for path in ("search/arch.json", "search/arch_history.json", "search/supernet.safetensors",
                 "search/model.safetensors", "search/config.json", "search/metrics.json",
                 "slim/model.safetensors", "slim/config.json", "slim/metrics.json", "slim.onnx"):
        assert (root / path).is_file(), path
    assert list((root / "slim").glob("events.out.tfevents.*"))
    arch = Arch.from_json(root / "search" / "arch.json")
    config = json.loads((root / "slim" / "config.json").read_text())
    assert config["arch"] == arch.to_dict() and config["init"] == "inherit" and config["kd"]["alpha"] == 0.9
    metrics = json.loads((root / "slim" / "metrics.json").read_text())
    assert metrics["flops"] == arch.flops and metrics["params"] == arch.params
    assert "teacher_top1" in metrics
    # tas.load_slim rebuilds the trained model from arch + safetensors and reproduces its metrics
    slim = tas.load_slim(root / "slim")
    from tas.data import create_loaders

    loaders = create_loaders("digits", batch_size=32, limit=256, img_size=arch.input_size[1])
    assert evaluate(slim, loaders["test"], "cpu")["top1"] == pytest.approx(metrics["top1"])
    assert exported["onnx"]["max_abs_diff"] <= 1e-4
    assert exported["models"]["slim"]["flops"] == arch.flops
    assert set(exported["speedup"]) == {"1", "4"}


def test_distillation_tensorboard_terms(pipeline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, _ = pipeline
    acc = EventAccumulator(str(root / "slim"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    for tag in ("train/ce", "train/kd", "val/top1", "val/teacher_top1"):
        assert tag in scalars, tag


def test_init_inherit_starts_from_teacher_weights_and_scratch_does_not(pipeline, monkeypatch):
    from tas.train import distill, loop as training

    root, teacher_dir, _ = pipeline
    teacher, _ = load_run(teacher_dir)
    arch = Arch.from_json(root / "search" / "arch.json")
    cfg = training.TrainConfig(arch=str(root / "search" / "arch.json"), teacher=str(teacher_dir), dataset="digits",
                               img_size=arch.input_size[1], limit=64, output=str(root / "unused"))
    ctx = training.prepare(cfg, mode="distill")
    inherit, _, _ = distill.build_student(cfg, ctx)
    # the teacher itself, pruned channels zeroed and dropped blocks skipped, computes the same function
    x = torch.randn(4, *arch.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = zeroing_oracle(teacher, arch)(x)
        assert (inherit.eval()(x) - expected).abs().max() <= 1e-4 * expected.abs().max()
    conv = inherit.conv1.weight
    idx = arch.groups["stem"]["indices"]
    assert torch.equal(conv, teacher.conv1.weight[idx])
    cfg.init = "scratch"
    scratch, _, _ = distill.build_student(cfg, ctx)
    assert not torch.equal(scratch.conv1.weight, conv)
    assert scratch.conv1.weight.shape == conv.shape
    # search: the weights the search saved beside arch.json (the supernet's, trained for 2 epochs)
    from safetensors.torch import load_file

    cfg.init = "search"
    searched, _, _ = distill.build_student(cfg, ctx)
    saved = load_file(str(root / "search" / "model.safetensors"))
    state = searched.state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    assert not torch.equal(searched.conv1.weight, conv)  # the search moved them away from the teacher's


def test_distill_bad_inputs(tmp_path, pipeline, train_script, capsys):
    root, teacher_dir, _ = pipeline
    arch = json.loads((root / "search" / "arch.json").read_text())
    newer = dict(arch, version=99)
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    other = dict(arch, model="cifar_resnet32")
    (tmp_path / "other.json").write_text(json.dumps(other))
    for spec, message in ((tmp_path / "newer.json", "newer than this tas"),
                          (tmp_path / "other.json", "was searched on cifar_resnet32")):
        capsys.readouterr()  # train.py's main in-process behind the CLI's error handling (no interpreter per case)
        code = run_main(train_script.main, [*TINY, "--arch", str(spec), "--teacher", str(teacher_dir), "--epochs", "1",
                                            "--output", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not (tmp_path / "o" / "model.safetensors").exists()
    # --init search with an arch.json that has no search run around it
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "arch.json").write_text(json.dumps(arch))
    capsys.readouterr()
    code = run_main(train_script.main, [*TINY, "--arch", str(tmp_path / "alone" / "arch.json"), "--teacher",
                                        str(teacher_dir), "--init", "search", "--epochs", "1", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--init search needs --arch to be a search run directory" in err and "Traceback" not in err, err
    r = subprocess.run([sys.executable, "-m", "tas.export", str(tmp_path), "--output", str(tmp_path / "x.onnx")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("teacher_dataset", ["mnist", "digits"])
def test_distilling_on_another_dataset_warns_and_records_both(tmp_path, teacher_run, train_script, capsys,
                                                               teacher_dataset):
    """A teacher trained on one dataset, distilled on another with the same class count, trains;
    it must not pass silently."""
    import shutil

    from tas.nas.supernet import create_supernet

    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_run, teacher)
    config = json.loads((teacher / "config.json").read_text())
    assert config["dataset"] == "digits"
    config["dataset"] = teacher_dataset  # as if trained on MNIST: 10 classes, 1 channel, like digits
    (teacher / "config.json").write_text(json.dumps(config))
    supernet = create_supernet(load_run(teacher)[0], input_size=config["input_size"])
    widths = {n: g.widths[len(g.widths) // 2] for n, g in supernet.groups().items()}
    supernet.make_arch(widths, {n: d[-1] for n, d in supernet.stage_depths.items()}).to_json(tmp_path / "arch.json")
    out = tmp_path / "slim"
    assert train_script.main([*TINY, "--limit", "64", "--epochs", "1", "--arch", str(tmp_path / "arch.json"),
                              "--teacher", str(teacher), "--output", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    if teacher_dataset == "digits":
        assert warnings == []
    else:
        assert len(warnings) == 1 and "was trained on mnist, but --dataset is digits" in warnings[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["teacher_dataset"]) == ("digits", teacher_dataset)


def test_a_teacher_with_another_class_count_is_refused_before_the_dataset_warning(capsys):
    from types import SimpleNamespace

    from tas.train.distill import _check_teacher_data
    from tas.errors import TasError

    cfg = SimpleNamespace(teacher="runs/t", dataset="digits")
    with pytest.raises(TasError, match="the teacher in runs/t has 100 classes, but --dataset digits has 10"):
        _check_teacher_data(cfg, {"dataset": "cifar100", "model_kwargs": {"num_classes": 100}},
                            SimpleNamespace(num_classes=10))
    assert "warning" not in capsys.readouterr().err
    _check_teacher_data(cfg, {"dataset": "mnist", "model_kwargs": {"num_classes": 10}}, SimpleNamespace(num_classes=10))
    assert "both have 10 classes" in capsys.readouterr().err
